"""Live capture: block-copy the disk while the guest keeps running.

The copy goes into a new qcow2 that shares the disk's backing file, so only
the top layer is copied.  Once the copy is in sync it is cancelled without a
pivot: the guest keeps writing to its own disk, and the copy holds the disk
as it was at the cancel.  The job is transient, so a persistent domain stays
defined throughout (Nova undefines it for the whole copy), and the guest is
never paused.
"""

import contextlib
import os
import time
from typing import Any, Iterator, List, Optional

from oslo_log import log as logging

from vmsnap_driver.capture import base
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal
from vmsnap_driver import qemu_img

LOG = logging.getLogger(__name__)

MIB = 1024 * 1024
# Poll quickly at first (a small disk is in sync within milliseconds), then
# back off so that a long copy does not hammer libvirtd.
FIRST_POLL = 0.02
MAX_POLL = 0.5


class BlockCopyCapture(base.Capture):
    mode = 'live'
    method = 'block_copy'

    def __init__(self, timeout: float, bandwidth_mib: int = 0) -> None:
        self.timeout = timeout
        self.bandwidth = bandwidth_mib * MIB

    @classmethod
    def from_conf(cls, options: Any,
                  caps: Optional[object] = None) -> 'BlockCopyCapture':
        return cls(timeout=options.block_job_timeout,
                   bandwidth_mib=options.block_copy_bandwidth)

    def scratch_bytes(self, chains: List[base.Chain]) -> int:
        # The copy holds the top layer's data: all of it for a disk without
        # a backing file.
        return base.top_layers_bytes(chains)

    @contextlib.contextmanager
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[base.Chain], workdir: str,
                freeze: base.Freeze = contextlib.nullcontext,
                record: Optional[journal.Record] = None
                ) -> Iterator[List[base.DiskView]]:
        record = journal.unrecorded(record)
        if len(disks) != 1:
            # Block jobs end one by one: several disks would not be
            # captured at one instant (decide.choose never asks this).
            raise exception.SnapshotUnsupported(
                mode='live', instance_uuid=guest.uuid,
                reason='a block copy captures one disk at a time')
        disk, top = disks[0], chains[0][0]
        copy = os.path.join(workdir, 'copy.qcow2')
        qemu_img.create_overlay(copy, top.virtual_size, top.backing_file,
                                top.backing_format)
        started = base.utcnow()
        record.update(block_copy={'disk': disk.target, 'dest': copy})
        try:
            guest.block_copy(disk.target, copy, 'qcow2', self.bandwidth)
        except Exception:
            record.update(block_copy=None)
            raise
        LOG.debug('Block copy of %(disk)s into %(copy)s started',
                  {'disk': disk.target, 'copy': copy})

        def cancel() -> None:
            self._cancel(guest, disk)
            record.update(block_copy=None)
        with base.undone_on_exit(cancel, 'Cancelling the block copy', guest):
            self._wait_in_sync(guest, disk)
            with freeze():
                # The instant the copy stops following the guest's writes.
                guest.abort_block_job(disk.target)
        captured = base.utcnow()
        LOG.info('Disk %(disk)s of guest %(name)s copied live in %(secs).2f s',
                 {'disk': disk.target, 'name': guest.name,
                  'secs': (captured - started).total_seconds()},
                 instance_uuid=guest.uuid)
        yield [base.DiskView(started_at=started, captured_at=captured,
                             path=copy, format='qcow2')]

    def _wait_in_sync(self, guest: guest_mod.Guest,
                      disk: guest_mod.Disk) -> None:
        deadline = time.monotonic() + self.timeout
        interval = FIRST_POLL
        while True:
            job = guest.block_job(disk.target)
            if job is None:
                raise exception.HypervisorError(
                    action='copy disk %s' % disk.target,
                    instance_uuid=guest.uuid,
                    reason='the block copy ended before it was in sync; '
                           'see the libvirtd and QEMU logs of this domain')
            if job.ready:
                return
            if time.monotonic() >= deadline:
                raise exception.BlockJobTimeout(
                    disk=disk.target, instance_uuid=guest.uuid,
                    timeout=self.timeout)
            time.sleep(interval)
            interval = min(interval * 2, MAX_POLL)

    @staticmethod
    def _cancel(guest: guest_mod.Guest, disk: guest_mod.Disk) -> None:
        if guest.block_job(disk.target) is None:
            return
        guest.abort_block_job(disk.target)
        LOG.debug('Block copy of %(disk)s cancelled; the guest keeps its '
                  'disk', {'disk': disk.target}, instance_uuid=guest.uuid)
