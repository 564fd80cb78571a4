"""Memory and disks at one instant: a live memory state, then pinned disks.

libvirt writes the guest's memory into a file while the guest runs (an
external memory snapshot whose disks are left to us, ``snapshot='manual'``)
and pauses it only for QEMU's last pass, so the state is final when the
call returns with the guest paused.  A pull-mode backup then pins every
disk at that same instant, and the guest runs again: it stops for QEMU's
last pass, libvirt's finishing of the memory file and two libvirt calls (a
fraction of a second here), never for a copy.  The pause is measured, not
taken from QEMU's downtime figure, which leaves out libvirt's part: a
watcher polls the domain's state while the memory is written.  No
overlay, no block commit, no snapshot metadata: the domain is untouched.
libvirt also refuses an incremental backup while the guest is
paused this way; a full one, as here, works.
"""

import contextlib
import os
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal

LOG = logging.getLogger(__name__)


# Seconds between two looks at the domain's state while its memory is
# written: the pause is known to this much.
WATCH_INTERVAL = 0.005


class _PauseWatch:
    """When the guest stopped running, seen from outside, to the 5 ms.

    libvirt pauses the guest inside the memory snapshot call; this thread
    notes the first moment it sees it paused (the call's return, at the
    latest).
    """

    def __init__(self, guest: guest_mod.Guest, enabled: bool) -> None:
        self._guest = guest
        self._enabled = enabled
        self._done = threading.Event()
        self.paused_at: Optional[float] = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.is_set() and self.paused_at is None:
            try:
                if self._guest.state() != guest_mod.RUNNING:
                    self.paused_at = time.monotonic()
            except Exception:
                return
            self._done.wait(WATCH_INTERVAL)

    def __enter__(self) -> '_PauseWatch':
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        returned = time.monotonic()
        self._done.set()
        if self._enabled:
            self._thread.join()
        if self.paused_at is None:
            self.paused_at = returned


class MemoryCapture(base.Capture):
    mode = 'live'
    method = 'memory+backup'

    def __init__(self, memory_bytes: int,
                 qemu_owner: Optional[Tuple[int, int]] = None) -> None:
        self.memory_bytes = memory_bytes
        self.qemu_owner = qemu_owner

    @classmethod
    def from_conf(cls, options: Any, caps: Optional[object] = None,
                  memory_bytes: int = 0) -> 'MemoryCapture':
        return cls(memory_bytes, qemu_owner=getattr(caps, 'qemu_owner',
                                                    None))

    def exports_nbd(self, state: str) -> bool:
        return True

    def scratch_bytes(self, chains: List[base.Chain]) -> int:
        # The memory file is at most the guest's RAM, and so is its
        # compressed copy for the upload; the backup's scratch files at
        # most the disks' top layers.
        return 2 * self.memory_bytes + base.top_layers_bytes(chains)

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[base.Chain], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext,
                record: Optional[journal.Record] = None
                ) -> Iterator[List[base.DiskView]]:
        record = journal.unrecorded(record)
        # No freeze: the memory state holds the filesystems' own caches,
        # so a restore continues from it with nothing to replay.
        state = guest.state()
        path = os.path.join(workdir, base.MEMORY_FILE)
        started = base.utcnow()
        paused = state == guest_mod.RUNNING
        record.update(paused=paused)
        try:
            with _PauseWatch(guest, enabled=paused) as watch:
                guest.save_memory(path)
        except Exception:
            # libvirt resumes the guest when the snapshot fails; make sure.
            if paused and guest.state() == guest_mod.PAUSED:
                base.resume(guest, state)
            record.update(paused=False)
            raise
        try:
            with backup.nbd_export(guest, disks, workdir,
                                   self.qemu_owner, record=record,
                                   checkpoint=self.checkpoint) as sock:
                captured = base.utcnow()
                if paused:
                    base.resume(guest, state)
                    paused = False
                    record.update(paused=False)
                pause = time.monotonic() - watch.paused_at
                self.memory = base.MemoryState(path, state, pause)
                LOG.info('Memory and disks %(disks)s of guest %(name)s '
                         'captured at one instant; the guest did not run '
                         'for %(pause).3f s',
                         {'disks': ', '.join(d.target for d in disks),
                          'name': guest.name, 'pause': pause},
                         instance_uuid=guest.uuid)
                yield backup.views(disks, sock, started, captured,
                                   self.checkpoint)
        finally:
            if paused:
                base.resume(guest, state)
                record.update(paused=False)
