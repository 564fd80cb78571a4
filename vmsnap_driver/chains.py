"""Snapshot chains: upload only the clusters changed since the last one.

The first snapshot of a chain is full and creates a libvirt checkpoint at
its instant (a persistent dirty bitmap in the qcow2).  The next is taken
with the backup API from that checkpoint, creating the next one at the same
instant: its NBD export carries the bitmap of what changed, and
:func:`vmsnap_driver.image_stream.qcow2_delta` uploads those clusters only,
as a qcow2 with no backing reference (Glance refuses one).  Restoring a
point means putting each delta back on its parent, from the full image up
(:func:`assemble`); its content digest (the tree one, see
:mod:`vmsnap_driver.digest`) is of the whole disk, so the rebuilt disk is
proven equal to the guest's at that instant.

A delta is trusted only when everything it rests on is: its parent image
is active in Glance, the checkpoint is the one the parent recorded and its
bitmap is sound (redefined from this host's record and validated by libvirt,
which forgets checkpoints when a domain is undefined and finds a bitmap
broken after an unclean QEMU exit), the disk is the same qcow2 at the same
size, the server was not reverted since, and the chain is not full.
Otherwise the snapshot is full, starts a new chain, and says why in
``vmsnap_mode_reason``.  A memory snapshot always starts one: libvirt 9.0
cannot read changed blocks while the guest is paused for its memory state.

The host keeps one record per server under ``<state_path>/chains``: the
chain's last image, its checkpoint and that checkpoint's definition.  Only
the newest checkpoint's bitmap is kept (it records every write since its
instant), and between snapshots not even its definition: libvirt refuses to
undefine a stopped domain that has checkpoints, which would break Nova's
hard reboot, resize and delete.  A snapshot redefines it from the record.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple
import uuid as uuidlib
from xml.etree import ElementTree

from oslo_log import log as logging
from oslo_utils import strutils
from oslo_utils import uuidutils

from vmsnap_driver import digest
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import image_safety
from vmsnap_driver import journal
from vmsnap_driver import qemu_img

LOG = logging.getLogger(__name__)

REQUEST_PROPERTY = 'vmsnap_incremental'
CHAIN_ID_PROPERTY = 'vmsnap_chain_id'
PARENT_PROPERTY = 'vmsnap_parent_image_id'
DEPTH_PROPERTY = 'vmsnap_chain_depth'
CHECKPOINT_PROPERTY = 'vmsnap_checkpoint'
DELTA_PROPERTY = 'vmsnap_delta'
FLATTENED_FROM_PROPERTY = 'vmsnap_flattened_from'
CHAIN_PROPERTIES = (CHAIN_ID_PROPERTY, PARENT_PROPERTY, DEPTH_PROPERTY,
                    CHECKPOINT_PROPERTY, DELTA_PROPERTY)

# Checkpoints vmsnap creates are named for their snapshot's image.
CHECKPOINT_PREFIX = 'vmsnap-'
DIRECTORY = 'chains'
# Captures that run a backup job, which alone can create checkpoints.
CAPTURE_METHODS = ('backup', 'memory+backup')
# A lineage longer than this is a loop in edited properties, not a chain.
MAX_LINEAGE = 1000


@dataclasses.dataclass(frozen=True)
class Link:
    """This snapshot's place in a chain, decided before the capture.

    ``checkpoint`` is created at the capture's instant (None: the snapshot
    is in no chain); a delta has its ``parent`` image.
    """

    requested: bool
    reason: str = ''
    name: str = ''
    checkpoint: Optional[str] = None
    parent: Optional[dict] = None
    chain_id: Optional[str] = None
    depth: int = 0
    # The parent's block digests (digest.BLOCK each), kept on this host:
    # a delta re-hashes only its changed blocks.  None: it hashes all.
    parent_blocks: Optional[bytes] = None

    @property
    def delta(self) -> bool:
        return self.parent is not None

    @property
    def incremental_from(self) -> Optional[str]:
        return self.parent[CHECKPOINT_PROPERTY] if self.parent else None

    def properties(self) -> Dict[str, str]:
        if not self.requested:
            return {}
        properties = {DELTA_PROPERTY: str(self.delta).lower()}
        if self.checkpoint:
            properties.update({CHAIN_ID_PROPERTY: self.chain_id,
                               DEPTH_PROPERTY: str(self.depth),
                               CHECKPOINT_PROPERTY: self.checkpoint})
        if self.delta:
            properties[PARENT_PROPERTY] = self.parent['id']
        return properties


def requested(image: dict, options: Any) -> bool:
    """The request's vmsnap_incremental property, else the configuration."""
    asked = image.get(REQUEST_PROPERTY)
    if asked is None:
        return bool(options.incremental)
    return strutils.bool_from_string(asked)


def plan(guest: guest_mod.Guest, images: Any, state_path: str,
         options: Any, image: dict, disks: List[guest_mod.Disk],
         virtual_size: int, method: str, image_format: str,
         memory: bool) -> Link:
    """Where this snapshot goes in its server's chain, and why.

    Validating the parent's checkpoint redefines it in libvirt from this
    host's record (a checkpoint that fails is deleted); :func:`commit` or
    :func:`abandon` releases the definition again.
    """
    if not requested(image, options):
        return Link(requested=False)

    def outside(reason: str) -> Link:
        return Link(True, 'full snapshot in no chain: ' + reason)

    if len(disks) != 1:
        return outside('a chain follows one disk; this snapshot captures '
                       '%d' % len(disks))
    disk = disks[0]
    if method not in CAPTURE_METHODS:
        return outside('changed blocks are read through a running guest\'s '
                       'backup job; this snapshot is taken by %s' % method)
    if disk.format != 'qcow2':
        return outside('disk %s is %s: only a qcow2 disk keeps a persistent '
                       'dirty bitmap' % (disk.target, disk.format))
    if image_format != 'qcow2':
        return outside('a delta is a qcow2 image; snapshot_image_format '
                       'says %s' % image_format)
    name = image.get('name') or ''
    checkpoint = CHECKPOINT_PREFIX + image['id']
    record = _read(state_path, guest.uuid)
    reason = ('a memory snapshot starts a new chain: libvirt cannot read '
              'changed blocks while the guest is paused for its memory '
              'state' if memory else
              _why_not_delta(guest, images, options, record, disk,
                             virtual_size))
    if isinstance(reason, str):
        return Link(True, 'full snapshot, new chain: ' + reason, name,
                    checkpoint, chain_id=str(uuidlib.uuid4()))
    parent = reason
    return Link(True, 'incremental since snapshot %s (checkpoint %s)'
                % (parent['id'], parent[CHECKPOINT_PROPERTY]), name,
                checkpoint, parent=parent, chain_id=record['chain_id'],
                depth=record['depth'] + 1,
                parent_blocks=_read_blocks(state_path, guest.uuid, record,
                                           parent['id'], virtual_size))


def _why_not_delta(guest: guest_mod.Guest, images: Any, options: Any,
                   record: Optional[dict], disk: guest_mod.Disk,
                   virtual_size: int) -> Any:
    """The parent image a delta can rest on, or why there is none."""
    if record is None:
        return 'no earlier snapshot of this server\'s chain on this host'
    parent_id = record['image_id']
    if record.get('reverted'):
        return 'the server was reverted since snapshot %s' % parent_id
    if (record['disk'], record['path']) != (disk.target, disk.path):
        return ('the chain followed disk %s (%s), not %s (%s)'
                % (record['disk'], record['path'], disk.target, disk.path))
    if record['virtual_size'] != virtual_size:
        return ('disk %s was resized since snapshot %s (%d to %d bytes)'
                % (disk.target, parent_id, record['virtual_size'],
                   virtual_size))
    if record['depth'] + 1 >= options.max_chain_length:
        return ('chain %s already holds max_chain_length (%d) images'
                % (record['chain_id'], options.max_chain_length))
    try:
        parent = images.get(parent_id)
    except exception.ImageNotFound:
        return 'the parent snapshot %s is gone from Glance' % parent_id
    if parent.get('status') != glance.ACTIVE:
        return 'the parent snapshot %s is %s, not active' % (
            parent_id, parent.get('status'))
    if (parent.get(CHECKPOINT_PROPERTY) != record['checkpoint']
            or parent.get(CHAIN_ID_PROPERTY) != record['chain_id']):
        return ('the parent snapshot %s does not record checkpoint %s of '
                'chain %s' % (parent_id, record['checkpoint'],
                              record['chain_id']))
    try:
        # A delta on a chain that cannot be restored would be worthless.
        lineage(images, parent)
    except exception.ChainBroken as e:
        return 'the chain under snapshot %s is broken: %s' % (
            parent_id, e.kwargs['reason'])
    try:
        guest.redefine_checkpoint(record['checkpoint_xml'])
    except exception.HypervisorError as e:
        _forget_checkpoint(guest, record['checkpoint'])
        return ('checkpoint %s is missing or not valid (%s)'
                % (record['checkpoint'], e.kwargs.get('reason', e)))
    return parent


def commit(guest: guest_mod.Guest, images: Any, state_path: str,
           link: Link, image_id: str, disk: guest_mod.Disk,
           virtual_size: int, blocks: Optional[bytes],
           record: journal.Record) -> None:
    """The snapshot is active: make it the chain's newest point.

    :param blocks: its block digests, for the next delta's digest.

    Once the host's record names it, nothing here fails the snapshot:
    tidying libvirt and marking Glance images are logged when they fail.
    """
    if not link.checkpoint:
        return
    previous = _read(state_path, guest.uuid)
    if blocks is not None:
        journal.write_bytes(_blocks_path(state_path, guest.uuid), blocks)
    _write(state_path, guest.uuid, {
        'blocks_of': image_id if blocks is not None else None,
        'chain_id': link.chain_id, 'image_id': image_id,
        'depth': link.depth, 'checkpoint': link.checkpoint,
        'checkpoint_xml': _standalone(guest.checkpoint_xml(link.checkpoint)),
        'disk': disk.target, 'path': disk.path,
        'virtual_size': virtual_size})
    record.update(checkpoint=None)
    if previous and not link.delta:
        _drop_bitmap(guest, previous)
    _tidy(guest, keep=link.checkpoint)
    if link.delta:
        # Glance keeps a parent while it has children; its owner can
        # still unprotect it, and every restore then names the gap.
        _mark(images, link.parent['id'], {'protected': True})
        _mark(images, image_id, {
            'name': '%s (vmsnap delta %d of chain %s, not bootable alone)'
                    % (link.name or 'snapshot', link.depth,
                       link.chain_id[:8])})
    LOG.info('Snapshot %(image)s is point %(depth)d of chain %(chain)s '
             '(checkpoint %(checkpoint)s)',
             {'image': image_id, 'depth': link.depth,
              'chain': link.chain_id, 'checkpoint': link.checkpoint},
             instance_uuid=guest.uuid)


def abandon(guest: guest_mod.Guest, link: Link,
            record: journal.Record) -> None:
    """The snapshot failed: drop its checkpoint, keep the parent's usable.

    The parent's bitmap has recorded every write since its own instant,
    so it covers the failed attempt's window too.  Called on an error
    path: a failure here is logged, the record keeps the checkpoint for
    recovery, and the snapshot's own error goes on.
    """
    if not link.checkpoint:
        return
    try:
        guest.delete_checkpoint(link.checkpoint)
        record.update(checkpoint=None)
        _tidy(guest, keep=link.incremental_from)
    except exception.HypervisorError as e:
        LOG.error('Checkpoint %(name)s of the failed snapshot could not be '
                  'deleted: %(error)s', {'name': link.checkpoint, 'error': e},
                  instance_uuid=guest.uuid)


def settle(guest: guest_mod.Guest, state_path: str, checkpoint: str) -> None:
    """Recovery: drop a killed snapshot's checkpoint unless it was kept."""
    record = _read(state_path, guest.uuid)
    if not record or record['checkpoint'] != checkpoint:
        _forget_checkpoint(guest, checkpoint)
        LOG.info('Checkpoint %s of an unfinished snapshot deleted',
                 checkpoint, instance_uuid=guest.uuid)
    _tidy(guest, keep=record['checkpoint'] if record else None)


def reverted(guest: guest_mod.Guest, state_path: str) -> None:
    """The guest's disks were replaced: no delta may rest on them.

    The new files have no bitmaps; any checkpoint definition goes too.
    """
    record = _read(state_path, guest.uuid)
    if record:
        record['reverted'] = True
        _write(state_path, guest.uuid, record)
    try:
        names = guest.checkpoints()
    except exception.HypervisorError as e:
        # A stale definition only fails the next validation: full then.
        LOG.warning('Checkpoints not listed after the revert: %s', e,
                    instance_uuid=guest.uuid)
        return
    for name in names:
        if name.startswith(CHECKPOINT_PREFIX):
            _undefine(guest, name)


def _tidy(guest: guest_mod.Guest, keep: Optional[str]) -> None:
    """Leave only ``keep``'s bitmap, and no checkpoint definition."""
    for name in guest.checkpoints():
        if not name.startswith(CHECKPOINT_PREFIX):
            continue
        if name == keep:
            _undefine(guest, name)
        else:
            _forget_checkpoint(guest, name)


def _drop_bitmap(guest: guest_mod.Guest, previous: dict) -> None:
    """A new chain started: the old chain's bitmap goes too.

    It is defined again from the old record to be deleted through libvirt;
    one that fails validation cannot be, and stays in the qcow2, unused.
    """
    try:
        guest.redefine_checkpoint(previous['checkpoint_xml'])
    except exception.HypervisorError:
        return


def _mark(images: Any, image_id: str, fields: Dict[str, Any]) -> None:
    try:
        images.set_properties(image_id, fields)
    except exception.VmsnapException as e:
        LOG.warning('Image %(image)s could not be updated with %(fields)s: '
                    '%(error)s', {'image': image_id, 'fields': fields,
                                  'error': e})


def _standalone(xml: str) -> str:
    """A checkpoint's definition without its parent, which may be gone.

    Redefining a checkpoint whose parent libvirt does not know fails;
    only the newest checkpoint is kept, so it needs none.
    """
    root = ElementTree.fromstring(xml)
    for parent in root.findall('parent'):
        root.remove(parent)
    return ElementTree.tostring(root, encoding='unicode')


def _forget_checkpoint(guest: guest_mod.Guest, name: str) -> None:
    """Delete a checkpoint; only its definition if its bitmap is broken."""
    try:
        guest.delete_checkpoint(name)
    except exception.HypervisorError:
        _undefine(guest, name)


def _undefine(guest: guest_mod.Guest, name: str) -> None:
    """Delete a checkpoint's definition; its bitmap stays in the qcow2."""
    try:
        guest.delete_checkpoint(name, metadata_only=True)
    except exception.HypervisorError as e:
        LOG.warning('The definition of checkpoint %(name)s stays: '
                    '%(error)s', {'name': name, 'error': e},
                    instance_uuid=guest.uuid)


def _path(state_path: str, instance_uuid: str) -> str:
    directory = os.path.join(state_path, DIRECTORY)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, '%s.json' % instance_uuid)


def _blocks_path(state_path: str, instance_uuid: str) -> str:
    return _path(state_path, instance_uuid)[:-len('.json')] + '.blocks'


def _read_blocks(state_path: str, instance_uuid: str, record: dict,
                 image_id: str, virtual_size: int) -> Optional[bytes]:
    """The block digests of ``image_id`` if this host has them whole.

    :param record: the server's chain record, which says whose they are.
    """
    try:
        with open(_blocks_path(state_path, instance_uuid), 'rb') as f:
            blocks = f.read()
    except FileNotFoundError:
        return None
    if (record.get('blocks_of') != image_id
            or len(blocks) != digest.block_count(virtual_size)
            * digest.DIGEST_SIZE):
        return None
    return blocks


def _read(state_path: str, instance_uuid: str) -> Optional[dict]:
    try:
        with open(_path(state_path, instance_uuid)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        LOG.warning('The chain record of %s is unreadable: the next '
                    'incremental snapshot starts a new chain', instance_uuid)
        return None


def _write(state_path: str, instance_uuid: str, data: dict) -> None:
    journal.write_json(_path(state_path, instance_uuid), data)


# -- restoring a point ------------------------------------------------------

def is_delta(image: dict) -> bool:
    return strutils.bool_from_string(image.get(DELTA_PROPERTY))


def lineage(images: Any, image: dict) -> List[dict]:
    """The chain's images from its full one up to ``image``.

    Raises ChainBroken naming the missing or wrong link: a point is
    restored whole or not at all.
    """
    if is_delta(image) and image.get('disk_format') != 'qcow2':
        raise exception.ChainBroken(image_id=image['id'], reason='a delta '
                                    'must be a qcow2 image')
    chain = [image]
    while is_delta(chain[0]):
        child = chain[0]

        def broken(reason: str) -> exception.ChainBroken:
            return exception.ChainBroken(
                image_id=image['id'], reason='%s, the parent of %s (depth '
                '%s of chain %s), %s' % (
                    child.get(PARENT_PROPERTY), child['id'],
                    child.get(DEPTH_PROPERTY),
                    child.get(CHAIN_ID_PROPERTY), reason))
        if len(chain) > MAX_LINEAGE:
            raise broken('is part of a loop')
        parent_id = child.get(PARENT_PROPERTY) or ''
        if not uuidutils.is_uuid_like(parent_id):
            raise broken('is not an image id')
        try:
            parent = images.get(parent_id)
        except exception.ImageNotFound:
            raise broken('is gone from Glance')
        if parent.get('id') != parent_id:
            raise broken('is not the image Glance returned')
        if parent.get('status') != glance.ACTIVE:
            raise broken('is %s, not active' % parent.get('status'))
        try:
            depths = int(parent.get(DEPTH_PROPERTY)), int(
                child.get(DEPTH_PROPERTY))
        except (TypeError, ValueError):
            raise broken('records no chain depth')
        if (parent.get(CHAIN_ID_PROPERTY) != child.get(CHAIN_ID_PROPERTY)
                or depths[0] != depths[1] - 1
                or parent.get('instance_uuid') != child.get('instance_uuid')
                or parent.get('disk_format') != 'qcow2'):
            raise broken('is not the qcow2 parent the chain records')
        chain.insert(0, parent)
    return chain


def fetch(images: Any, image: dict, dest: str,
          progress: Callable[[int], None]) -> None:
    """Download one image and prove it safe to open (it is untrusted)."""
    served = glance.download(images, image, dest, progress)
    if image.get('os_hash_value') not in (None, served):
        raise exception.ImageCorrupt(
            image_id=image['id'], reason='the bytes Glance served are not '
            'the ones it stored')
    image_safety.check(dest, image.get('disk_format'), image['id'])


def assemble(images: Any, chain: List[dict], workdir: str,
             progress: Callable[[int], None] = lambda _n: None) -> str:
    """Download a point's ``chain`` (its :func:`lineage`) as one file.

    The full image is downloaded into ``workdir``; each delta after it is
    downloaded, inspected as untrusted, put on that file as its backing
    (by vmsnap) and committed into it, which writes only the delta's
    clusters: the file then holds the disk at the last image's instant,
    with no backing reference, in the full image's format.  Restoring a
    point costs about its images' download, not a pass over the disk per
    link.
    """
    base = os.path.join(workdir, chain[0]['id'])
    fetch(images, chain[0], base, progress)
    for link in chain[1:]:
        path = os.path.join(workdir, link['id'])
        fetch(images, link, path, progress)
        qemu_img.set_backing(path, base, 'qcow2')
        qemu_img.commit(path)
        os.unlink(path)
    return base


def unchained_properties(image: dict) -> Dict[str, str]:
    """An image's own properties, but those that place it in a chain."""
    return {key: value for key, value in image.items()
            if key not in glance.CORE_FIELDS
            and key not in CHAIN_PROPERTIES
            and isinstance(value, str)}


def flat_properties(image: dict) -> Dict[str, str]:
    """A delta's properties, as those of a full snapshot of that point."""
    return dict(unchained_properties(image),
                **{FLATTENED_FROM_PROPERTY: image['id']})


def rebuild(images: Any, chain: List[dict], workdir: str,
            progress: Callable[[int], None] = lambda _n: None
            ) -> Tuple[str, digest.Digests]:
    """A point (its :func:`lineage`) as one file, proven; and its digests.

    The file holds the point's whole disk, in its full image's format,
    with the digests a full image of it records.
    """
    image = chain[-1]
    flat = assemble(images, chain, workdir, progress)
    expected, tree = digest.recorded(image)
    digests = digest.of_point_file(flat, image['disk_format'],
                                   untrusted=True, plain=not tree)
    actual = digests.tree if tree else digests.sha256
    if actual != expected:
        raise exception.ImageCorrupt(
            image_id=image['id'], reason='the rebuilt point has content '
            'digest %s, the snapshot recorded %s' % (actual, expected))
    return flat, digests


def flatten(images: Any, chain: List[dict], name: str, workdir: str,
            progress: Callable[[int], None] = lambda _n: None) -> str:
    """Write a point (its :func:`lineage`) as one full, bootable image.

    Returns the new image's id.
    """
    image = chain[-1]
    flat, digests = rebuild(images, chain, workdir, progress)
    created = images.create(name, dict(flat_properties(image),
                                       **digests.properties()))
    try:
        with open(flat, 'rb') as data:
            images.upload(created['id'], data, os.path.getsize(flat),
                          image['disk_format'], {})
    except Exception:
        images.delete(created['id'])
        raise
    LOG.info('Point %(point)s of chain %(chain)s flattened into image '
             '%(image)s', {'point': image['id'], 'image': created['id'],
                           'chain': image.get(CHAIN_ID_PROPERTY)})
    return created['id']
