"""Live capture through libvirt's backup API: a point-in-time NBD export.

``backupBegin`` in pull mode makes QEMU export the disk as it was at that
instant, while the guest keeps running: before the guest overwrites a
block, QEMU copies the old content into a scratch file.  Nothing is copied
up front, so the capture takes milliseconds whatever the disk size, and the
export is read once, straight into the upload.  Ending the job drops the
export and the scratch file; the domain definition is never touched.
"""

import contextlib
import datetime
import os
from typing import Any, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver.capture import base
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal

LOG = logging.getLogger(__name__)

# The bitmap libvirt exports with an incremental backup of a disk.
EXPORT_BITMAP = 'backup-%s'


@contextlib.contextmanager
def nbd_export(guest: guest_mod.Guest, disks: List[guest_mod.Disk],
               workdir: str, qemu_owner: Optional[Tuple[int, int]],
               freeze: base.Freeze = contextlib.nullcontext,
               record: Optional[journal.Record] = None,
               checkpoint: Optional[base.Checkpoint] = None
               ) -> Iterator[str]:
    """Export ``disks`` as they are now; yield the NBD socket path.

    Each disk is an export named after its target.  QEMU creates the
    socket and the scratch files itself, as the user it runs as, so their
    directory belongs to that user.  A ``checkpoint`` is created at the
    same instant, and outlives the job: its owner deletes it or keeps it.
    """
    directory = os.path.join(workdir, 'backup')
    os.mkdir(directory, 0o700)
    if qemu_owner:
        os.chown(directory, *qemu_owner)
    socket_path = os.path.join(directory, 'nbd.sock')
    targets = [disk.target for disk in disks]
    record = journal.unrecorded(record)
    record.update(backup_socket=socket_path,
                  **({'checkpoint': checkpoint.name} if checkpoint else {}))
    with freeze():
        try:
            guest.backup_begin(
                targets, socket_path, directory,
                incremental=checkpoint.since if checkpoint else None,
                checkpoint=checkpoint.name if checkpoint else None)
        except Exception:
            if _none_left(guest, socket_path):
                record.update(backup_socket=None)
            raise
    LOG.debug('Disks %(disks)s exported over NBD at %(socket)s',
              {'disks': targets, 'socket': socket_path},
              instance_uuid=guest.uuid)

    def end() -> None:
        _end_job(guest, socket_path)
        record.update(backup_socket=None)
        LOG.debug('Backup job of %(disks)s ended', {'disks': targets},
                  instance_uuid=guest.uuid)
    with base.undone_on_exit(end, 'Ending the backup job', guest):
        yield socket_path


def _end_job(guest: guest_mod.Guest, socket_path: str) -> None:
    try:
        guest.abort_job()
    except exception.HypervisorError:
        # A guest that shut down, or a domain deleted, took its job
        # along: only a job still there is a failure.
        if guest.backup_socket() == socket_path:
            raise


def _none_left(guest: guest_mod.Guest, socket_path: str) -> bool:
    """After a failed start: whether no job of ours runs (ended if so).

    The start may have taken effect before its answer was lost (libvirtd
    restarted under it).  A failure to tell is logged; the record then
    keeps the socket for recovery.
    """
    try:
        if guest.backup_socket() == socket_path:
            _end_job(guest, socket_path)
        return True
    except exception.HypervisorError as e:
        LOG.error('Whether the failed backup job started anyway is not '
                  'known (%s): its record is kept for recovery', e,
                  instance_uuid=guest.uuid)
        return False


def views(disks: List[guest_mod.Disk], socket_path: str,
          started: datetime.datetime, captured: datetime.datetime,
          checkpoint: Optional[base.Checkpoint] = None
          ) -> List[base.DiskView]:
    incremental = checkpoint is not None and checkpoint.since is not None
    return [base.DiskView(started_at=started, captured_at=captured,
                          nbd_socket=socket_path, nbd_export=disk.target,
                          dirty_bitmap=EXPORT_BITMAP % disk.target
                          if incremental else None)
            for disk in disks]


class BackupCapture(base.Capture):
    mode = 'live'
    method = 'backup'

    def __init__(self, qemu_owner: Optional[Tuple[int, int]] = None) -> None:
        self.qemu_owner = qemu_owner

    @classmethod
    def from_conf(cls, options: Any,
                  caps: Optional[object] = None) -> 'BackupCapture':
        return cls(qemu_owner=getattr(caps, 'qemu_owner', None))

    def exports_nbd(self, state: str) -> bool:
        return True

    def scratch_bytes(self, chains: List[base.Chain]) -> int:
        # A scratch file only receives blocks the guest overwrites while
        # the export is read; at worst, the guest rewrites its top layers.
        return base.top_layers_bytes(chains)

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[base.Chain], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext,
                record: Optional[journal.Record] = None
                ) -> Iterator[List[base.DiskView]]:
        started = base.utcnow()
        with nbd_export(guest, disks, workdir, self.qemu_owner,
                        freeze, record, self.checkpoint) as sock:
            captured = base.utcnow()
            LOG.info('Disks %(disks)s of guest %(name)s frozen in time for '
                     'a live snapshot in %(secs).3f s',
                     {'disks': ', '.join(d.target for d in disks),
                      'name': guest.name,
                      'secs': (captured - started).total_seconds()},
                     instance_uuid=guest.uuid)
            yield views(disks, sock, started, captured, self.checkpoint)
