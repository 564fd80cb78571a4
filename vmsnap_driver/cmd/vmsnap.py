"""``vmsnap``: operator commands.

``vmsnap verify IMAGE_ID`` checks a snapshot image; ``vmsnap revert SERVER
IMAGE_ID`` brings a local guest back to one of its snapshots, as ``openstack
server rebuild`` does through vmsnap-compute; ``vmsnap chain SERVER`` lists
a server's snapshot chains and ``vmsnap flatten IMAGE_ID --name NAME``
writes one point of a chain as a full image; ``vmsnap export IMAGE_ID
--output FILE.ova`` writes a snapshot as one portable archive and ``vmsnap
import FILE.ova [--define --disk-dir DIR [--start]]`` brings it back.
It reads the same configuration as the service (``--config-file``).
"""

import os
import shutil
import sys
import tempfile
from typing import List, Optional

from oslo_config import cfg
from stevedore import driver as stevedore_driver

from vmsnap_driver import archive
from vmsnap_driver import chains
from vmsnap_driver.compute import manager
from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import host as host_mod
from vmsnap_driver import progress
from vmsnap_driver import verify

CONF = config.CONF


def _add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        'verify', help='Download a snapshot image and check it against the '
                       'content digest it carries; exits 1 on a mismatch.')
    parser.add_argument('image_id', metavar='IMAGE',
                        help='Image name or id.')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    parser = subparsers.add_parser(
        'revert', help='Bring a guest on this host back to one of its '
                       'snapshots, in place: its disks hold the snapshot\'s '
                       'bytes, and it resumes from the snapshot\'s memory '
                       'when the snapshot has one, else boots.')
    parser.add_argument('server', help='Domain name or UUID.')
    parser.add_argument('image_id', metavar='IMAGE',
                        help='A snapshot of that guest: name or id.')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    parser = subparsers.add_parser(
        'flatten', help='Write one point of a snapshot chain (a delta and '
                        'the images under it) as one full, bootable image; '
                        'prints its id.')
    parser.add_argument('image_id', metavar='IMAGE',
                        help='Image name or id.')
    parser.add_argument('--name', required=True,
                        help='Name of the new image.')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    parser = subparsers.add_parser(
        'chain', help='List the snapshot chains of a server: each image, '
                      'its parent, depth, size and time.')
    parser.add_argument('server', help='Domain name or UUID.')
    parser = subparsers.add_parser(
        'export', help='Write a snapshot (its disks, memory state, domain '
                       'XML and properties) as one OVA file.')
    parser.add_argument('image_id', metavar='IMAGE',
                        help='Image name or id.')
    parser.add_argument('--output', required=True,
                        help='The OVA file to write, or - for stdout.')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    parser = subparsers.add_parser(
        'import', help='Bring an exported snapshot (OVA) back as images, '
                       'and with --define as a guest on this host; prints '
                       'the new image ids.')
    parser.add_argument('archive', help='The OVA file.')
    parser.add_argument('--define', action='store_true',
                        help='Also define the guest from the archived '
                             'domain XML.')
    parser.add_argument('--disk-dir',
                        help='Where --define writes the guest\'s disks.')
    parser.add_argument('--start', action='store_true',
                        help='Start the defined guest: it resumes from the '
                             'archived memory state, or boots without one.')
    parser.add_argument('--name', dest='new_name',
                        help='Define the guest under this name, with a new '
                             'UUID (default: the archived name and UUID).')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    subparsers.add_parser(
        'recover', help='Finish or undo what a killed vmsnap left (a '
                        'saved or paused guest, a backup job, a half-done '
                        'revert, queued images), as vmsnap-compute does at '
                        'start-up.  Run it with vmsnap-compute stopped.')


command_opt = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_parsers)


def _revert() -> int:
    driver = _load_driver()
    try:
        guest = host_mod.Host(CONF.libvirt.connection_uri).lookup(
            CONF.command.server)
        instance = manager.Instance(uuid=guest.uuid, name=guest.name)
        image_id = _image_id()
        plan = driver.check_revert(None, instance, image_id)
        bar = progress.Progress(plan.download_bytes(), 'restoring',
                                enabled=not CONF.command.no_progress)
        driver.revert(None, instance, image_id,
                      progress=bar.update)
        bar.finish()
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    print('server %s reverted to image %s: %s (%s)' % (
        guest.name, image_id, guest.state(),
        'resumed from its memory state' if plan.memory
        else 'booted' if guest.state() != 'shutoff' else 'left off'))
    return 0


def _image_id() -> str:
    """The image argument, an id or a name, as an id."""
    return glance.ImageService(CONF).find(CONF.command.image_id)['id']


def _load_driver():
    return stevedore_driver.DriverManager(
        'vmsnap.compute_drivers', CONF.compute_driver,
        invoke_on_load=True).driver


def _recover() -> int:
    outcomes = _load_driver().recover()
    for outcome in outcomes:
        print('%-8s %-9s %s' % ('ok' if outcome.settled else 'FAILED',
                                outcome.kind, outcome.instance_uuid))
    if not outcomes:
        print('nothing to recover')
    return 0 if all(o.settled for o in outcomes) else 1


def _workdir() -> str:
    """Scratch space for downloads, where snapshots go (sized for disks)."""
    os.makedirs(CONF.libvirt.snapshots_directory, mode=0o711, exist_ok=True)
    return tempfile.mkdtemp(prefix='vmsnap-cli-',
                            dir=CONF.libvirt.snapshots_directory)


def _flatten() -> int:
    images = glance.ImageService(CONF)
    workdir = _workdir()
    try:
        chain = chains.lineage(images, images.find(CONF.command.image_id))
        bar = progress.Progress(sum(i.get('size') or 0 for i in chain),
                                'downloading',
                                enabled=not CONF.command.no_progress)
        image_id = chains.flatten(images, chain, CONF.command.name, workdir,
                                  bar.update)
        bar.finish()
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(image_id)
    return 0


def _depth(image: dict) -> int:
    """An image's chain depth; an edited, unreadable one sorts first."""
    try:
        return int(image.get(chains.DEPTH_PROPERTY))
    except (TypeError, ValueError):
        return -1


def _chain() -> int:
    try:
        guest = host_mod.Host(CONF.libvirt.connection_uri).lookup(
            CONF.command.server)
        found = glance.ImageService(CONF).list(instance_uuid=guest.uuid)
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    linked = sorted((i for i in found if i.get(chains.CHAIN_ID_PROPERTY)),
                    key=lambda i: (i.get('created_at') or '',))
    order = {}
    for image in linked:
        order.setdefault(image[chains.CHAIN_ID_PROPERTY], len(order))
    linked.sort(key=lambda i: (order[i[chains.CHAIN_ID_PROPERTY]],
                               _depth(i)))
    row = '%-36s %5s  %-36s %-36s %12s  %-8s %s'
    print(row % ('chain', 'depth', 'image', 'parent', 'size', 'status',
                 'created'))
    for image in linked:
        print(row % (image[chains.CHAIN_ID_PROPERTY],
                     image.get(chains.DEPTH_PROPERTY, ''), image['id'],
                     image.get(chains.PARENT_PROPERTY) or '-',
                     image.get('size') or 0, image.get('status'),
                     image.get('created_at')))
    if not linked:
        print('server %s has no snapshot chain' % guest.name)
    return 0


def _verify() -> int:
    images = glance.ImageService(CONF)
    try:
        # The download is a full image: put it where snapshots go, which
        # the operator sized for that.
        os.makedirs(CONF.libvirt.snapshots_directory, mode=0o711,
                    exist_ok=True)
        verdict = verify.verify(images,
                                images.find(CONF.command.image_id)['id'],
                                workdir=CONF.libvirt.snapshots_directory,
                                show_progress=not CONF.command.no_progress)
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 2
    for check in verdict.checks:
        print('%-5s %-15s %s' % ('ok' if check.ok else 'FAIL', check.name,
                                 check.detail))
    print('image %s: %s' % (
        verdict.image_id, 'VERIFIED' if verdict.ok else 'MISMATCH'))
    return 0 if verdict.ok else 1


def _export() -> int:
    output = CONF.command.output
    workdir = _workdir()
    partial = None
    try:
        export = archive.plan_export(glance.ImageService(CONF),
                                     _image_id(), workdir)
        bar = progress.Progress(export.size(), 'exporting',
                                enabled=not CONF.command.no_progress)
        if output == '-':
            export.write(sys.stdout.buffer, bar.update)
            sys.stdout.buffer.flush()
        else:
            # Written aside, then renamed: no half-written archive under
            # the name asked for.
            partial = '%s.partial-%d' % (output, os.getpid())
            with open(partial, 'xb') as out:
                export.write(out, bar.update)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, output)
            partial = None
        bar.finish()
    except (exception.VmsnapException, OSError) as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if partial and os.path.exists(partial):
            os.unlink(partial)
    if output != '-':
        print('%s: %d bytes' % (output, os.path.getsize(output)))
    return 0


def _import() -> int:
    command = CONF.command
    if (command.start or command.disk_dir or command.new_name) and (
            not command.define):
        print('ERROR: --disk-dir, --start and --name go with --define',
              file=sys.stderr)
        return 2
    if command.define and not command.disk_dir:
        print('ERROR: --define needs --disk-dir DIR', file=sys.stderr)
        return 2
    define = (archive.DefineRequest(command.disk_dir, command.start,
                                    command.new_name)
              if command.define else None)
    # The archive is read to be proven, then again to be imported (and
    # its disks a third time to be defined).
    passes = 3 if define else 2
    try:
        bar = progress.Progress(passes * os.path.getsize(command.archive),
                                'importing',
                                enabled=not command.no_progress)
        imported = _load_driver().import_archive(command.archive, define,
                                                 bar.update)
    except (exception.VmsnapException, OSError) as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    bar.finish()
    for what, image_id in imported.images.items():
        print('%-8s %s' % (what, image_id))
    if imported.guest:
        print('domain   %s %s: %s' % (
            imported.guest.name, imported.guest.uuid,
            'resumed from its memory state' if imported.resumed
            else imported.guest.state()))
    return 0


COMMANDS = {'verify': _verify, 'revert': _revert, 'recover': _recover,
            'flatten': _flatten, 'chain': _chain, 'export': _export,
            'import': _import}


def main(argv: Optional[List[str]] = None) -> int:
    CONF.register_cli_opt(command_opt)
    # Standard output carries results (ids, an archive): logs go to
    # standard error unless the configuration sends them elsewhere.
    CONF.set_default('use_stderr', True)
    config.parse_args(sys.argv[1:] if argv is None else argv)
    return COMMANDS[CONF.command.name]()


if __name__ == '__main__':
    sys.exit(main())
