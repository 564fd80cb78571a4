"""Live capture through libvirt's backup API: a point-in-time NBD export.

``backupBegin`` in pull mode makes QEMU export the disk as it was at that
instant, while the guest keeps running: before the guest overwrites a
block, QEMU copies the old content into a scratch file.  Nothing is copied
up front, so the capture takes milliseconds whatever the disk size, and the
export is read once, straight into the upload.  Ending the job drops the
export and the scratch file; the domain definition is never touched.
"""

import contextlib
import os
from typing import Iterator, List, Optional, Tuple

from oslo_config import cfg
from oslo_log import log as logging

from vmsnap_driver.capture import base
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import qemu_img

LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def nbd_export(guest: guest_mod.Guest, disk: guest_mod.Disk, workdir: str,
               qemu_owner: Optional[Tuple[int, int]],
               freeze: base.Freeze = contextlib.nullcontext
               ) -> Iterator[Tuple[str, str]]:
    """Export ``disk`` as it is now; yield (socket path, export name).

    QEMU creates the socket and the scratch file itself, as the user it
    runs as, so their directory belongs to that user.
    """
    directory = os.path.join(workdir, 'backup')
    os.mkdir(directory, 0o700)
    if qemu_owner:
        os.chown(directory, *qemu_owner)
    socket_path = os.path.join(directory, 'nbd.sock')
    with freeze():
        guest.backup_begin(disk.target, socket_path,
                           os.path.join(directory, 'scratch.qcow2'))
    LOG.debug('Disk %(disk)s exported over NBD at %(socket)s',
              {'disk': disk.target, 'socket': socket_path},
              instance_uuid=guest.uuid)
    try:
        yield socket_path, disk.target
    finally:
        guest.abort_job()
        LOG.debug('Backup job of %(disk)s ended', {'disk': disk.target},
                  instance_uuid=guest.uuid)


class BackupCapture(base.Capture):
    mode = 'live'
    method = 'backup'

    def __init__(self, qemu_owner: Optional[Tuple[int, int]] = None) -> None:
        self.qemu_owner = qemu_owner

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts,
                  caps: Optional[object] = None) -> 'BackupCapture':
        return cls(qemu_owner=getattr(caps, 'qemu_owner', None))

    def exports_nbd(self, state: str) -> bool:
        return True

    def scratch_bytes(self, chain: List[qemu_img.ImageInfo]) -> int:
        # The scratch file only receives blocks the guest overwrites while
        # the export is read; at worst, the guest rewrites its top layer.
        return chain[0].actual_size

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disk: guest_mod.Disk,
                chain: List[qemu_img.ImageInfo], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext
                ) -> Iterator[base.DiskView]:
        started = base.utcnow()
        with nbd_export(guest, disk, workdir, self.qemu_owner,
                        freeze) as (sock, name):
            captured = base.utcnow()
            LOG.info('Disk %(disk)s of guest %(name)s frozen in time for '
                     'a live snapshot in %(secs).3f s',
                     {'disk': disk.target, 'name': guest.name,
                      'secs': (captured - started).total_seconds()},
                     instance_uuid=guest.uuid)
            yield base.DiskView(started_at=started, captured_at=captured,
                                nbd_socket=sock, nbd_export=name)
