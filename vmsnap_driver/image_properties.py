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
``vmsnap_version``
    The vmsnap release that took it.
"""

import datetime
from typing import Any, Dict

import vmsnap_driver

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


def snapshot_properties(instance: Any, mode: str, reason: str, method: str,
                        disk: Any, started_at: datetime.datetime,
                        captured_at: datetime.datetime) -> Dict[str, str]:
    properties = inherited(instance)
    image_ref = getattr(instance, 'image_ref', None)
    if image_ref:
        properties['base_image_ref'] = str(image_ref)
    properties.update({
        'image_type': 'snapshot',
        'instance_uuid': instance.uuid,
        'vmsnap_mode': mode,
        'vmsnap_mode_reason': reason[:MAX_VALUE_LENGTH],
        'vmsnap_capture_method': method,
        'vmsnap_source_disk': disk.target,
        'vmsnap_source_path': disk.path[:MAX_VALUE_LENGTH],
        'vmsnap_source_format': disk.format,
        'vmsnap_capture_start': _timestamp(started_at),
        'vmsnap_capture_end': _timestamp(captured_at),
        'vmsnap_version': vmsnap_driver.__version__,
    })
    return properties
