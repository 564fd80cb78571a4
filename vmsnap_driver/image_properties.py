"""The properties a snapshot image carries.

Besides what Nova records (``image_type``, ``instance_uuid``, the base
image and the properties inherited from it), every vmsnap image records how
it was taken, so that whoever restores it knows what they hold:

``vmsnap_mode``
    ``live`` (block copy while the guest ran) or ``cold`` (guest saved,
    then restored).
``vmsnap_mode_reason``
    Why that mode was used (configuration, or what ``auto`` found).
``vmsnap_capture_method``
    How the disk was captured: ``backup`` (point-in-time NBD export),
    ``block_copy``, ``managedsave+backup`` or ``managedsave``.
``vmsnap_source_disk``, ``vmsnap_source_path``, ``vmsnap_source_format``
    The guest disk captured: its target (``vda``), file and format.
``vmsnap_capture_start``, ``vmsnap_capture_end``
    UTC, ISO 8601: when the capture began and the instant the image's
    content was fixed.  Everything the guest had made durable before the
    start is in the image; nothing it wrote after the end is.
``vmsnap_consistency``
    ``crash-consistent``: the disk as a power cut would have left it (the
    filesystem may need its journal replayed); ``filesystem-frozen``: the
    guest's filesystems were frozen by its agent at the instant of capture.
    ``memory``: the guest's memory state was captured at the same instant
    (``vmsnap_memory_image``): a revert resumes the guest's own running
    state, nothing to replay.
``vmsnap_memory_image``, ``vmsnap_memory_sha256``, ``vmsnap_pause_seconds``
    With a memory state: the hidden image that holds it, the sha256 of the
    uncompressed state, and how long the guest did not run for it.
``vmsnap_guest_state``
    ``running``, ``paused`` or ``shutoff`` when the snapshot was taken: the
    state a revert brings the guest back to.
``vmsnap_freeze_seconds``
    How long the guest's filesystems stayed frozen (``0`` when not frozen).
``vmsnap_disks``
    The guest disks captured together, at that one instant.
``vmsnap_group_id``, ``vmsnap_disk_target``, ``vmsnap_group_images``
    With ``snapshot_disks = all``: the id shared by the images of one
    snapshot, the disk each holds, and, on the boot disk's image, the
    others as ``target=image_id`` pairs.
``vmsnap_libvirt_version``, ``vmsnap_qemu_version``
    The hypervisor that took it.
``vmsnap_content_sha256``
    sha256 of the virtual disk's raw content (every byte, zeros included),
    whatever the image's format or layout: ``vmsnap verify`` checks an
    image, or anything restored from it, against it.  Not on a mostly
    empty disk, whose zeros would cost more to hash than its data to
    upload.
``vmsnap_content_tree_sha256``
    On images of a chain and of mostly empty disks: sha256 of the sha256
    digests of each 1 MiB block of the virtual disk.  A delta carries only
    this one (see :mod:`vmsnap_driver.digest`).
``vmsnap_version``
    The vmsnap release that took it.
"""

import dataclasses

import datetime
from typing import Any, Dict, List, Tuple

import vmsnap_driver
from vmsnap_driver import glance

# Nova keeps the base image's properties in system_metadata under this
# prefix; these keys describe the base image's data, not the snapshot's,
# or are Glance's own and would be refused.
SYSTEM_METADATA_PREFIX = 'image_'
NOT_INHERITED = frozenset([
    'base_image_ref', 'checksum', 'container_format', 'disk_format',
    'image_location', 'image_state', 'image_type', 'instance_uuid',
    'min_disk', 'min_ram', 'owner', 'size', 'virtual_size',
])
NOT_INHERITED_PREFIXES = ('os_glance', 'os_hash', 'vmsnap_')

MAX_VALUE_LENGTH = 255

MEMORY = 'memory'
DIGEST_PROPERTY = 'vmsnap_content_sha256'
TREE_DIGEST_PROPERTY = 'vmsnap_content_tree_sha256'
# vmsnap properties a request may set on its image.
REQUEST_PROPERTIES = frozenset(['vmsnap_memory', 'vmsnap_incremental'])
# Glance's core and reserved fields, and what Nova and vmsnap write: a
# request's metadata may set none of them.
RESERVED = glance.CORE_FIELDS | frozenset([
    'image_type', 'instance_uuid', 'base_image_ref', 'image_location',
    'image_state', 'owner_id', 'user_id',
])
RESERVED_PREFIXES = ('os_', 'vmsnap_')
PAUSE_PROPERTY = 'vmsnap_pause_seconds'
GROUP_ID_PROPERTY = 'vmsnap_group_id'
GROUP_IMAGES_PROPERTY = 'vmsnap_group_images'
GUEST_STATE_PROPERTY = 'vmsnap_guest_state'


def group_members(image: dict) -> List[Tuple[str, str]]:
    """(disk target, image id) of the other disks of ``image``'s snapshot."""
    pairs = (image.get(GROUP_IMAGES_PROPERTY) or '').split(',')
    return [(target, image_id) for target, _sep, image_id in
            (pair.partition('=') for pair in pairs if pair)]


def group_value(members: List[Tuple[str, str]]) -> str:
    return ','.join('%s=%s' % pair for pair in members)


def reserved(key: str) -> bool:
    """Whether a request's metadata may not set ``key`` on its image."""
    if key in REQUEST_PROPERTIES:
        return False
    return key.lower() in RESERVED or key.lower().startswith(
        RESERVED_PREFIXES)


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat()


def inherited(instance: Any) -> Dict[str, str]:
    """Base image properties from a Nova-style ``system_metadata``."""
    system_metadata = getattr(instance, 'system_metadata', None) or {}
    properties = {}
    for key, value in system_metadata.items():
        if not key.startswith(SYSTEM_METADATA_PREFIX) or value is None:
            continue
        name = key[len(SYSTEM_METADATA_PREFIX):]
        if name in NOT_INHERITED or name.startswith(NOT_INHERITED_PREFIXES):
            continue
        properties[name] = str(value)
    return properties


def requested(instance: Any, metadata: Dict[str, str]) -> Dict[str, str]:
    """A new snapshot image's properties, as Nova's API creates it.

    The instance's inherited ones, the request's, then what makes it a
    snapshot of that instance (which a request cannot override).
    """
    properties = inherited(instance)
    properties.update(metadata)
    properties.update({'image_type': 'snapshot',
                       'instance_uuid': instance.uuid})
    if getattr(instance, 'image_ref', None):
        properties['base_image_ref'] = instance.image_ref
    return properties


@dataclasses.dataclass(frozen=True)
class CapturePlan:
    """How one snapshot is taken: all known once it is planned."""

    mode: str
    reason: str
    method: str
    disk: Any
    libvirt_version: str
    qemu_version: str
    disks: Tuple[str, ...] = ()
    guest_state: str = ''


@dataclasses.dataclass(frozen=True)
class CaptureInstant:
    """What only the capture itself fixes."""

    started_at: datetime.datetime
    captured_at: datetime.datetime
    consistency: str = 'crash-consistent'
    freeze_seconds: float = 0.0


def snapshot_properties(instance: Any,
                        record: CapturePlan) -> Dict[str, str]:
    """How the snapshot is taken, not its instant: known once planned."""
    properties = inherited(instance)
    image_ref = getattr(instance, 'image_ref', None)
    if image_ref:
        properties['base_image_ref'] = str(image_ref)
    properties.update({
        'image_type': 'snapshot',
        'instance_uuid': instance.uuid,
        'vmsnap_mode': record.mode,
        'vmsnap_mode_reason': record.reason[:MAX_VALUE_LENGTH],
        'vmsnap_capture_method': record.method,
        'vmsnap_source_disk': record.disk.target,
        'vmsnap_source_path': record.disk.path[:MAX_VALUE_LENGTH],
        'vmsnap_source_format': record.disk.format,
        'vmsnap_disks': ','.join(record.disks or [record.disk.target]),
        GUEST_STATE_PROPERTY: record.guest_state,
        'vmsnap_libvirt_version': record.libvirt_version,
        'vmsnap_qemu_version': record.qemu_version,
        'vmsnap_version': vmsnap_driver.__version__,
    })
    return properties


def instant_properties(instant: CaptureInstant) -> Dict[str, str]:
    """Known only once the capture has fixed its instant."""
    return {
        'vmsnap_capture_start': _timestamp(instant.started_at),
        'vmsnap_capture_end': _timestamp(instant.captured_at),
        'vmsnap_consistency': instant.consistency,
        'vmsnap_freeze_seconds': '%.3f' % instant.freeze_seconds,
    }
