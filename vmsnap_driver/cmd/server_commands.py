"""``vmsnap`` commands about the guests on this host.

A server argument is a domain's name or UUID, as ``openstack server``
takes a server's name or id.
"""

import argparse
from typing import Tuple

from cliff import lister
from cliff import show

from vmsnap_driver import chains
from vmsnap_driver.cmd import common
from vmsnap_driver.compute import manager
from vmsnap_driver import engine
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import host as host_mod
from vmsnap_driver import image_properties

CONF = common.CONF

# What ``vmsnap snapshot`` shows of the image it made.
SNAPSHOT_FIELDS = ('id', 'name', 'status', 'disk_format', 'size',
                   'vmsnap_mode', 'vmsnap_capture_start',
                   'vmsnap_capture_end')


def _guest(name_or_uuid: str):
    return host_mod.Host(CONF.libvirt.connection_uri).lookup(name_or_uuid)


def _property(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError('%r is not KEY=VALUE' % text)
    if image_properties.reserved(key):
        raise argparse.ArgumentTypeError(
            '%s is set by Glance or vmsnap, not by a request' % key)
    return key, value


class Snapshot(show.ShowOne):
    """Snapshot a guest on this host into a new Glance image.

    What 'openstack server image create' does through vmsnap-compute.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('server', help='Domain name or UUID.')
        parser.add_argument('--name', '--image-name', dest='image_name',
                            help='Name of the new image (default: '
                                 '"<server> snapshot").')
        memory = parser.add_mutually_exclusive_group()
        memory.add_argument('--memory', dest='memory', action='store_const',
                            const='true',
                            help='Also capture the running guest\'s memory '
                                 '(a revert then resumes it).')
        memory.add_argument('--no-memory', dest='memory',
                            action='store_const', const='false',
                            help='Disks only, whatever the configuration '
                                 'says.')
        parser.add_argument('--incremental', action='store_true',
                            help='Upload only what changed since the '
                                 'guest\'s last snapshot (a chain delta).')
        parser.add_argument('--property', metavar='KEY=VALUE',
                            type=_property, action='append', default=[],
                            help='A property of the new image; may be '
                                 'repeated.')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        driver = common.load_driver()
        images = common.images()
        guest = _guest(parsed_args.server)
        instance = manager.Instance(uuid=guest.uuid, name=guest.name)
        metadata = dict(parsed_args.property)
        if parsed_args.memory:
            metadata[engine.MEMORY_REQUEST_PROPERTY] = parsed_args.memory
        if parsed_args.incremental:
            metadata[chains.REQUEST_PROPERTY] = 'true'
        image = images.create(
            parsed_args.image_name or '%s snapshot' % guest.name,
            image_properties.requested(instance, metadata))
        bar = common.progress_bar(parsed_args, 0, 'uploading')

        def uploaded(done: int, expected: int) -> None:
            bar.total = max(expected, 1)
            bar.update(done - bar.done)
        try:
            driver.snapshot(None, instance, image['id'], progress=uploaded)
        except BaseException:
            # As Nova's compute manager does: no queued or half-written
            # image outlives a failed snapshot.
            images.delete(image['id'])
            raise
        bar.finish()
        image = images.get(image['id'])
        return SNAPSHOT_FIELDS, [image.get(key) for key in SNAPSHOT_FIELDS]


class Revert(show.ShowOne):
    """Bring a guest back to one of its snapshots, in place.

    Its disks then hold the snapshot's bytes, and it resumes from the
    snapshot's memory when the snapshot has one, else boots (what
    'openstack server rebuild' does through vmsnap-compute).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('server', help='Domain name or UUID.')
        parser.add_argument('image', help='A snapshot of that guest: image '
                                          'name or id.')
        common.add_progress_option(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        driver = common.load_driver()
        guest = _guest(parsed_args.server)
        instance = manager.Instance(uuid=guest.uuid, name=guest.name)
        image_id = common.images().find(parsed_args.image)['id']
        plan = driver.check_revert(None, instance, image_id)
        bar = common.progress_bar(parsed_args, plan.download_bytes(),
                                  'restoring')
        driver.revert(None, instance, image_id, progress=bar.update)
        bar.finish()
        state = guest.state()
        how = ('resumed from its memory state' if plan.memory
               else 'booted' if state != guest_mod.SHUTOFF else 'left off')
        return (('server', 'id', 'image', 'state', 'how'),
                (guest.name, guest.uuid, image_id, state, how))


def _depth(image: dict) -> int:
    """An image's chain depth; an edited, unreadable one sorts first."""
    try:
        return int(image.get(chains.DEPTH_PROPERTY))
    except (TypeError, ValueError):
        return -1


class Chain(lister.Lister):
    """List a server's snapshot chains, oldest first.

    Each image with its parent, depth, size and time.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('server', help='Domain name or UUID.')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        guest = _guest(parsed_args.server)
        found = common.images().list(instance_uuid=guest.uuid)
        linked = sorted((i for i in found if i.get(chains.CHAIN_ID_PROPERTY)),
                        key=lambda i: i.get('created_at') or '')
        order = {}
        for image in linked:
            order.setdefault(image[chains.CHAIN_ID_PROPERTY], len(order))
        linked.sort(key=lambda i: (order[i[chains.CHAIN_ID_PROPERTY]],
                                   _depth(i)))
        return (('chain', 'depth', 'image', 'parent', 'size', 'status',
                 'created'),
                [(i[chains.CHAIN_ID_PROPERTY], _depth(i), i['id'],
                  i.get(chains.PARENT_PROPERTY), i.get('size') or 0,
                  i.get('status'), i.get('created_at')) for i in linked])


class Recover(lister.Lister):
    """Finish or undo what a killed vmsnap left on this host.

    A saved or paused guest, a backup job, a half-done revert or import,
    queued images: as vmsnap-compute does at start-up.  Run it with
    vmsnap-compute stopped.  Exits 1 when something could not be settled.
    """

    failed = False

    def take_action(self, parsed_args: argparse.Namespace) -> tuple:
        outcomes = common.load_driver().recover()
        self.failed = not all(o.settled for o in outcomes)
        return (('result', 'kind', 'server', 'message'),
                [('ok' if o.settled else 'FAILED', o.kind, o.instance_uuid,
                  o.message) for o in outcomes])

    def run(self, parsed_args: argparse.Namespace) -> int:
        return super().run(parsed_args) or int(self.failed)
