"""Images read back from Glance are untrusted: inspect before qemu opens them.

An image can name a backing file or an external data file (a host path
qemu would open), or claim one format and be another.  oslo.utils' format
inspector, the one Glance and Nova use, reads the headers in Python without
opening anything else; only an image that passes it is handed to qemu-img
or qemu-nbd, and those then run under resource limits
(``qemu_img.UNTRUSTED_LIMITS``).
"""

from typing import Any, Optional

from oslo_utils.imageutils import format_inspector

from vmsnap_driver import exception

READ_SIZE = 64 * 1024
# A raw disk that holds a partition table is detected as one.
ACCEPTED = {'qcow2': ('qcow2',), 'raw': ('raw', 'gpt')}


def check(path: str, expected_format: str, image_id: str) -> None:
    """Raise ImageCorrupt unless ``path`` is a safe ``expected_format``."""
    with open(path, 'rb') as f:
        problem = problem_of(f, expected_format)
    if problem:
        raise exception.ImageCorrupt(image_id=image_id, reason=problem)


def problem_of(f: Any, expected_format: str) -> Optional[str]:
    """Why the image read from file object ``f`` is unsafe, or None.

    Reads only as far as the inspectors need (the headers of a qcow2).
    """
    if expected_format not in ACCEPTED:
        return ('its disk_format is %r, not one vmsnap restores (%s)'
                % (expected_format, ', '.join(ACCEPTED)))
    wrapper = format_inspector.InspectWrapper(f)
    try:
        try:
            while wrapper.read(READ_SIZE) and not wrapper.format:
                pass
        finally:
            # Ends the inspectors: a short file is judged on what it had.
            wrapper.close()
        inspector = wrapper.format
    except format_inspector.ImageFormatError as e:
        return 'its format cannot be told safely: %s' % e
    found = str(inspector)
    if found not in ACCEPTED[expected_format]:
        return 'it says %s but holds %s' % (expected_format, found)
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        return ('it fails the safety checks (%s): a snapshot never refers '
                'to other files' % ', '.join(
                    '%s: %s' % (name, violation)
                    for name, violation in sorted(e.failures.items())))
    except format_inspector.ImageFormatError as e:
        return 'its %s structure is unreadable: %s' % (found, e)
    return None
