"""Cold capture: stop the guest with its memory saved, read its disk.

``managedsave`` writes the guest's memory to libvirt's save file and stops
QEMU, so the disk is still and consistent with the saved memory.  Starting
the domain afterwards resumes it from that memory (no reboot), paused if it
was paused.  A shut-off guest is read as it is and never started.
"""

import contextlib
from typing import Iterator, List

from oslo_log import log as logging

from vmsnap_driver.capture import base
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import qemu_img

LOG = logging.getLogger(__name__)


class ManagedSaveCapture(base.Capture):
    mode = 'cold'

    def scratch_bytes(self, chain: List[qemu_img.ImageInfo]) -> int:
        return 0

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disk: guest_mod.Disk,
                chain: List[qemu_img.ImageInfo],
                workdir: str) -> Iterator[base.DiskView]:
        state = guest.state()
        started = base.utcnow()
        if state == guest_mod.SHUTOFF:
            yield base.DiskView(path=disk.path, format=disk.format,
                                started_at=started, captured_at=started)
            return
        guest.managed_save(paused=(state == guest_mod.PAUSED))
        captured = base.utcnow()
        LOG.info('Guest %(name)s saved for a cold snapshot in %(secs).2f s',
                 {'name': guest.name,
                  'secs': (captured - started).total_seconds()},
                 instance_uuid=guest.uuid)
        try:
            yield base.DiskView(path=disk.path, format=disk.format,
                                started_at=started, captured_at=captured)
        finally:
            _restore(guest, state)


def _restore(guest: guest_mod.Guest, state: str) -> None:
    try:
        guest.launch()
    except exception.HypervisorError as e:
        LOG.error('Guest %(name)s could not be restored from its saved '
                  'state: %(error)s', {'name': guest.name, 'error': e},
                  instance_uuid=guest.uuid)
        raise exception.GuestNotRestored(
            instance_uuid=guest.uuid, state=state, reason=e.message)
    LOG.info('Guest %(name)s resumed from its saved state (%(state)s)',
             {'name': guest.name, 'state': state}, instance_uuid=guest.uuid)
