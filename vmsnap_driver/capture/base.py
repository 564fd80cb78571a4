"""The interface every capture strategy implements.

A capture turns a guest's disk into a *stable view*: a file, plus its
format, that holds the disk exactly as it was at one instant and that no one
writes while the view is open.  The driver flattens the view with qemu-img
inside the ``with`` block; leaving the block releases whatever the capture
held (a copy to delete, a stopped guest to restore).  Adding a strategy is
adding a module here.
"""

import abc
import contextlib
import dataclasses
import datetime
from typing import Any, Callable, ContextManager, Iterator, List, Optional


from oslo_log import log as logging

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal
from vmsnap_driver import qemu_img

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DiskView:
    """A point-in-time view of a disk that stays put until released.

    Either a file (``path`` in ``format``, perhaps with a backing chain)
    or an NBD export of the disk's raw content (``nbd_socket``,
    ``nbd_export``).
    """

    started_at: datetime.datetime
    captured_at: datetime.datetime
    path: Optional[str] = None
    format: Optional[str] = None
    nbd_socket: Optional[str] = None
    nbd_export: Optional[str] = None
    # With an incremental backup: the export's bitmap of what changed.
    dirty_bitmap: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint a backup creates at its instant.

    ``since`` is the earlier checkpoint whose changes the export carries
    (an incremental backup), or None.
    """

    name: str
    since: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class MemoryState:
    """The guest's memory and device state, saved at the disks' instant.

    ``path`` has ``virDomainSave``'s format; ``state`` is the guest's state
    when it was saved, which a restore brings back; ``pause_seconds`` is how
    long the guest did not run for it.
    """

    path: str
    state: str
    pause_seconds: float


# Where a capture that keeps the memory writes it, in its workspace.
MEMORY_FILE = 'memory.save'

# What captures record in the operation's journal record while it is true:
# a backup job's socket, a block copy, a pause, a save, a freeze, a
# checkpoint not yet part of a chain.
RECORDED_CHANGES = ('backup_socket', 'block_copy', 'paused', 'saved',
                    'frozen', 'checkpoint')


Freeze = Callable[[], ContextManager[None]]
Chain = List[qemu_img.ImageInfo]


def top_layers_bytes(chains: List[Chain]) -> int:
    """Data in the disks' top layers: the most a copy of them can hold."""
    return sum(chain[0].actual_size for chain in chains)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@contextlib.contextmanager
def undone_on_exit(undo: Callable[[], None], what: str,
                   guest: guest_mod.Guest) -> Iterator[None]:
    """Run ``undo`` on the way out, normal or not.

    When an error is already on its way out, a failing ``undo`` is logged
    and the first error goes on: the cause is never hidden by the cleanup.
    """
    try:
        yield
    except BaseException:
        try:
            undo()
        except Exception as e:
            LOG.error('%(what)s failed as well: %(error)s',
                      {'what': what, 'error': e}, instance_uuid=guest.uuid)
        raise
    undo()


def resume(guest: guest_mod.Guest, state: str) -> None:
    """Let a guest a capture paused run again, or say how to."""
    try:
        guest.resume()
    except exception.HypervisorError as e:
        raise exception.GuestNotRestored(
            instance_uuid=guest.uuid, state=state,
            reason='%s; resume it with "virsh resume %s"'
                   % (e.message, guest.uuid))
    LOG.info('Guest %(name)s running again', {'name': guest.name},
             instance_uuid=guest.uuid)


class Capture(abc.ABC):
    """One way of capturing a guest's disk."""

    mode: str
    method: str
    # Set by captures that also save the guest's memory, once capture()
    # has yielded: what the memory image is made of.
    memory: Optional[MemoryState] = None
    # Set by the engine, for captures that run a backup job (chains):
    # the checkpoint to create at the capture's instant.
    checkpoint: Optional[Checkpoint] = None

    @classmethod
    def from_conf(cls, options: Any,
                  caps: Optional[object] = None) -> 'Capture':
        return cls()

    def exports_nbd(self, state: str) -> bool:
        """Whether a guest in ``state`` is captured as an NBD export."""
        return False

    @abc.abstractmethod
    def scratch_bytes(self, chains: List[Chain]) -> int:
        """Bytes the capture writes to the workspace besides the images."""

    @abc.abstractmethod
    def capture(self, guest: guest_mod.Guest, disks: List[guest_mod.Disk],
                chains: List[Chain], workdir: str,
                freeze: Freeze = contextlib.nullcontext,
                record: journal.Record = None
                ) -> ContextManager[List[DiskView]]:
        """Capture ``disks`` at one instant; yield a view of each, in order.

        ``freeze()`` wraps the single step that fixes the disks' content in
        time (it freezes the guest's filesystems when asked to).  On exit,
        normal or not, the guest must be in the state it had before and
        nothing the capture created may remain outside ``workdir``.
        Before each change to the guest (a job, a pause, a save) the
        capture says so in ``record``, and again once it is undone:
        recovery undoes what a killed process left (RECORDED_CHANGES).
        """
