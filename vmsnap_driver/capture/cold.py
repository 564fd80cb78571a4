"""Cold capture: stop the guest with its memory saved, then read its disk.

``managedsave`` writes the guest's memory to libvirt's save file and stops
QEMU, so the disk is still and consistent with the saved memory.  Starting
the domain again resumes it from that memory (no reboot), paused if it was
paused.  A shut-off guest is read as it is and never started.

With the backup API, the guest does not stay down while its disk is read:
it is restored paused, its disk is pinned by a point-in-time export before
it runs a single instruction, and it resumes at once.  Its downtime is then
the save and the restore, whatever the size of the disk.

When the snapshot keeps the memory, the guest is saved into the snapshot's
workspace instead of libvirt's managed save file (whose place libvirt does
not tell), and restored from there: that file is the memory image.
"""

import contextlib
import os
import time
from typing import Any, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal

LOG = logging.getLogger(__name__)


# The journal's word for a guest in libvirt's managed save.
MANAGED = 'managed'


class ManagedSaveCapture(base.Capture):
    mode = 'cold'

    def __init__(self, use_backup: bool = False,
                 qemu_owner: Optional[Tuple[int, int]] = None,
                 memory_bytes: int = 0) -> None:
        self.use_backup = use_backup
        self.qemu_owner = qemu_owner
        self.memory_bytes = memory_bytes
        self.method = '%s%s' % ('save' if memory_bytes else 'managedsave',
                                '+backup' if use_backup else '')

    @classmethod
    def from_conf(cls, options: Any, caps: Optional[object] = None,
                  memory_bytes: int = 0) -> 'ManagedSaveCapture':
        """:param memory_bytes: the guest's RAM when the memory is kept."""
        return cls(use_backup=bool(options.use_backup_api
                                   and getattr(caps, 'backup', False)),
                   qemu_owner=getattr(caps, 'qemu_owner', None),
                   memory_bytes=memory_bytes)

    def exports_nbd(self, state: str) -> bool:
        return self.use_backup and state in guest_mod.ACTIVE_STATES

    def scratch_bytes(self, chains: List[base.Chain]) -> int:
        scratch = base.top_layers_bytes(chains) if self.use_backup else 0
        # The memory file and its compressed copy for the upload.
        return scratch + 2 * self.memory_bytes

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[base.Chain], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext,
                record: Optional[journal.Record] = None
                ) -> Iterator[List[base.DiskView]]:
        # A saved guest is not frozen: quiesce.plan never asks a cold
        # capture to freeze.
        record = journal.unrecorded(record)
        state = guest.state()
        started = base.utcnow()

        def files(captured):
            return [base.DiskView(path=d.path, format=d.format,
                                  started_at=started, captured_at=captured)
                    for d in disks]
        if state == guest_mod.SHUTOFF:
            yield files(started)
            return
        saved_paused = state == guest_mod.PAUSED
        stopped_at = time.monotonic()
        if self.memory_bytes:
            path = os.path.join(workdir, base.MEMORY_FILE)
            record.update(saved=path, saved_state=state)
            _or_forget(record, 'saved', lambda: guest.save(path))

            def launch(paused):
                try:
                    guest.restore(path, paused=paused)
                except exception.HypervisorError as e:
                    # The workspace goes away with the snapshot: keep the
                    # guest's only copy of its memory beside it.
                    kept = os.path.join(os.path.dirname(workdir),
                                        '%s.save' % guest.uuid)
                    os.replace(path, kept)
                    record.update(saved=kept)
                    raise exception.HypervisorError(
                        action='restore the guest', instance_uuid=guest.uuid,
                        reason='%s; its memory is kept in %s: "virsh restore '
                               '%s" brings it back' % (e.message, kept, kept))
        else:
            record.update(saved=MANAGED, saved_state=state)
            _or_forget(record, 'saved',
                       lambda: guest.managed_save(paused=saved_paused))

            def launch(paused):
                # A guest saved paused comes back paused from launch().
                (guest.launch_paused if paused and not saved_paused
                 else guest.launch)()
        captured = base.utcnow()
        LOG.info('Guest %(name)s saved for a cold snapshot in %(secs).2f s',
                 {'name': guest.name,
                  'secs': (captured - started).total_seconds()},
                 instance_uuid=guest.uuid)

        def remember_memory():
            if self.memory_bytes:
                self.memory = base.MemoryState(
                    path, state, time.monotonic() - stopped_at)
        if not self.use_backup:
            try:
                yield files(captured)
            finally:
                _restore(guest, state, lambda: launch(saved_paused))
                record.update(saved=None)
                remember_memory()
            return

        resumed = state != guest_mod.RUNNING
        record.update(paused=not resumed)
        _restore(guest, state, lambda: launch(True))
        record.update(saved=None)
        try:
            with backup.nbd_export(guest, disks, workdir,
                                   self.qemu_owner, record=record) as sock:
                if not resumed:
                    base.resume(guest, state)
                    resumed = True
                    record.update(paused=False)
                remember_memory()
                yield backup.views(disks, sock, started, captured)
        finally:
            if not resumed:
                base.resume(guest, state)
                record.update(paused=False)


def _or_forget(record: journal.Record, fact: str, change) -> None:
    """Make ``change``; if it fails, the record must not claim it."""
    try:
        change()
    except Exception:
        record.update(**{fact: None})
        raise


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
