"""``vmsnap``: operator commands.

``vmsnap verify IMAGE_ID`` checks a snapshot image; ``vmsnap revert SERVER
IMAGE_ID`` brings a local guest back to one of its snapshots, as ``openstack
server rebuild`` does through vmsnap-compute.  It reads the same
configuration as the service (``--config-file``).
"""

import os
import sys
from typing import List, Optional

from oslo_config import cfg
from stevedore import driver as stevedore_driver

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
    parser.add_argument('image_id')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')
    parser = subparsers.add_parser(
        'revert', help='Bring a guest on this host back to one of its '
                       'snapshots, in place: its disks hold the snapshot\'s '
                       'bytes, and it resumes from the snapshot\'s memory '
                       'when the snapshot has one, else boots.')
    parser.add_argument('server', help='Domain name or UUID.')
    parser.add_argument('image_id', help='A snapshot of that guest.')
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
        plan = driver.check_revert(None, instance, CONF.command.image_id)
        bar = progress.Progress(plan.download_bytes(), 'restoring',
                                enabled=not CONF.command.no_progress)
        driver.revert(None, instance, CONF.command.image_id,
                      progress=bar.update)
        bar.finish()
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    print('server %s reverted to image %s: %s (%s)' % (
        guest.name, CONF.command.image_id, guest.state(),
        'resumed from its memory state' if plan.memory
        else 'booted' if guest.state() != 'shutoff' else 'left off'))
    return 0


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


def main(argv: Optional[List[str]] = None) -> int:
    CONF.register_cli_opt(command_opt)
    config.parse_args(sys.argv[1:] if argv is None else argv)
    if CONF.command.name == 'revert':
        return _revert()
    if CONF.command.name == 'recover':
        return _recover()
    images = glance.ImageService(CONF)
    try:
        # The download is a full image: put it where snapshots go, which
        # the operator sized for that.
        os.makedirs(CONF.libvirt.snapshots_directory, mode=0o711,
                    exist_ok=True)
        verdict = verify.verify(images, CONF.command.image_id,
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


if __name__ == '__main__':
    sys.exit(main())
