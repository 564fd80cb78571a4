"""A private scratch directory for one snapshot, checked for room first.

Checking free space before writing turns a disk-full failure halfway
through a long copy, which could also starve the guests sharing that
filesystem, into an immediate, explicit error.  Snapshots running side by
side (vmsnap-compute runs several) would each see the same free space and
together need more: a workspace holds its room until it is removed, and
every check counts what the others hold on that filesystem and have not
written yet.  The
reservations are this process's: another process (the ``vmsnap`` command)
is not counted.
"""

import contextlib
import os
import shutil
import tempfile
import threading
from typing import Dict, Iterator, Tuple

from oslo_log import log as logging

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

MIB = 1024 * 1024
# qcow2 metadata and filesystem overhead on top of the data estimate.
MARGIN = 64 * MIB


# The workspaces alive in this process: path -> (filesystem, bytes held).
_reservations: Dict[str, Tuple[int, int]] = {}
_reservations_lock = threading.Lock()


def check_space(directory: str, needed_bytes: int) -> None:
    """Fail now, not halfway through a long copy, when room is short."""
    with _reservations_lock:
        _check(directory, os.stat(directory).st_dev, needed_bytes + MARGIN)


def _check(directory: str, device: int, needed: int) -> None:
    free = shutil.disk_usage(directory).free - _outstanding(device)
    if free < needed:
        raise exception.InsufficientSpace(directory=directory,
                                          needed_mib=needed // MIB,
                                          free_mib=max(free, 0) // MIB)


def _outstanding(device: int) -> int:
    """What the workspaces on ``device`` hold and have not written yet.

    What they have written is already gone from the free space.
    """
    return sum(max(0, held - _allocated(path))
               for path, (dev, held) in _reservations.items()
               if dev == device)


def _allocated(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


@contextlib.contextmanager
def workspace(directory: str, needed_bytes: int) -> Iterator[str]:
    """Yield a new directory under ``directory``; remove it on exit.

    The directory is 0711: QEMU, running as another user, must reach a
    block copy's destination inside it, but may not list it.  Its room is
    held for the other workspaces' checks until it is removed.
    """
    os.makedirs(directory, mode=0o711, exist_ok=True)
    device, needed = os.stat(directory).st_dev, needed_bytes + MARGIN
    with _reservations_lock:
        _check(directory, device, needed)
        path = tempfile.mkdtemp(prefix='vmsnap-', dir=directory)
        _reservations[path] = (device, needed)
    try:
        os.chmod(path, 0o711)
        yield path
    finally:
        with _reservations_lock:
            del _reservations[path]
        shutil.rmtree(path, ignore_errors=True)
        LOG.debug('Removed snapshot workspace %s', path)
