"""Cold capture: stop the guest with its memory saved, then read its disk.

``managedsave`` writes the guest's memory to libvirt's save file and stops
QEMU, so the disk is still and consistent with the saved memory.  Starting
the domain again resumes it from that memory (no reboot), paused if it was
paused.  A shut-off guest is read as it is and never started.

With the backup API, the guest does not stay down while its disk is read:
it is restored paused, its disk is pinned by a point-in-time export before
it runs a single instruction, and it resumes at once.  Its downtime is then
the save and the restore, whatever the size of the disk.
"""

import contextlib
from typing import Any, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod

LOG = logging.getLogger(__name__)


class ManagedSaveCapture(base.Capture):
    mode = 'cold'

    def __init__(self, use_backup: bool = False,
                 qemu_owner: Optional[Tuple[int, int]] = None) -> None:
        self.use_backup = use_backup
        self.qemu_owner = qemu_owner
        self.method = 'managedsave+backup' if use_backup else 'managedsave'

    @classmethod
    def from_conf(cls, options: Any,
                  caps: Optional[object] = None) -> 'ManagedSaveCapture':
        return cls(use_backup=bool(options.use_backup_api
                                   and getattr(caps, 'backup', False)),
                   qemu_owner=getattr(caps, 'qemu_owner', None))

    def exports_nbd(self, state: str) -> bool:
        return self.use_backup and state in guest_mod.ACTIVE_STATES

    def scratch_bytes(self, chains: List[base.Chain]) -> int:
        if not self.use_backup:
            return 0
        return base.top_layers_bytes(chains)

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[base.Chain], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext
                ) -> Iterator[List[base.DiskView]]:
        # A saved guest is not frozen: quiesce.plan never asks a cold
        # capture to freeze.
        state = guest.state()
        started = base.utcnow()

        def files(captured):
            return [base.DiskView(path=d.path, format=d.format,
                                  started_at=started, captured_at=captured)
                    for d in disks]
        if state == guest_mod.SHUTOFF:
            yield files(started)
            return
        guest.managed_save(paused=(state == guest_mod.PAUSED))
        captured = base.utcnow()
        LOG.info('Guest %(name)s saved for a cold snapshot in %(secs).2f s',
                 {'name': guest.name,
                  'secs': (captured - started).total_seconds()},
                 instance_uuid=guest.uuid)
        if not self.use_backup:
            try:
                yield files(captured)
            finally:
                _restore(guest, state, guest.launch)
            return

        _restore(guest, state, guest.launch_paused)
        resumed = state != guest_mod.RUNNING
        try:
            with backup.nbd_export(guest, disks, workdir,
                                   self.qemu_owner) as sock:
                if not resumed:
                    _resume(guest, state)
                    resumed = True
                yield backup.views(disks, sock, started, captured)
        finally:
            if not resumed:
                _resume(guest, state)


def _restore(guest: guest_mod.Guest, state: str, launch) -> None:
    try:
        launch()
    except exception.HypervisorError as e:
        LOG.error('Guest %(name)s could not be restored from its saved '
                  'state: %(error)s', {'name': guest.name, 'error': e},
                  instance_uuid=guest.uuid)
        raise exception.GuestNotRestored(
            instance_uuid=guest.uuid, state=state, reason=e.message)
    LOG.info('Guest %(name)s restored from its saved state',
             {'name': guest.name}, instance_uuid=guest.uuid)


def _resume(guest: guest_mod.Guest, state: str) -> None:
    try:
        guest.resume()
    except exception.HypervisorError as e:
        raise exception.GuestNotRestored(
            instance_uuid=guest.uuid, state=state,
            reason='%s; resume it with "virsh resume %s"'
                   % (e.message, guest.uuid))
    LOG.info('Guest %(name)s running again', {'name': guest.name},
             instance_uuid=guest.uuid)
