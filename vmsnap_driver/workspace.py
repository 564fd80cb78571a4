"""A private scratch directory for one snapshot, checked for room first.

Checking free space before writing turns a disk-full failure halfway
through a long copy, which could also starve the guests sharing that
filesystem, into an immediate, explicit error.  Snapshots running side by
side (vmsnap-compute runs several) would each see the same free space and
together need more: a workspace reserves its room until it is removed, and
every check counts what the others reserved on that filesystem.  The
reservations are this process's: another process (the ``vmsnap`` command)
is not counted.
"""

import collections
import contextlib
import os
import shutil
import tempfile
import threading
from typing import Iterator

from oslo_log import log as logging

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

MIB = 1024 * 1024
# qcow2 metadata and filesystem overhead on top of the data estimate.
MARGIN = 64 * MIB


# Bytes reserved by the workspaces alive in this process, by filesystem.
_reserved = collections.Counter()
_reserved_lock = threading.Lock()


def check_space(directory: str, needed_bytes: int) -> None:
    """Fail now, not halfway through a long copy, when room is short."""
    with _reserved_lock:
        _check(directory, needed_bytes + MARGIN)


def _check(directory: str, needed: int) -> None:
    free = shutil.disk_usage(directory).free - _reserved[
        os.stat(directory).st_dev]
    if free < needed:
        raise exception.InsufficientSpace(directory=directory,
                                          needed_mib=needed // MIB,
                                          free_mib=max(free, 0) // MIB)


@contextlib.contextmanager
def _reservation(directory: str, needed_bytes: int) -> Iterator[None]:
    """Room checked and held for the block's duration."""
    device, needed = os.stat(directory).st_dev, needed_bytes + MARGIN
    with _reserved_lock:
        _check(directory, needed)
        _reserved[device] += needed
    try:
        yield
    finally:
        with _reserved_lock:
            _reserved[device] -= needed


@contextlib.contextmanager
def workspace(directory: str, needed_bytes: int) -> Iterator[str]:
    """Yield a new directory under ``directory``; remove it on exit.

    The directory is 0711: QEMU, running as another user, must reach a
    block copy's destination inside it, but may not list it.
    """
    os.makedirs(directory, mode=0o711, exist_ok=True)
    with _reservation(directory, needed_bytes):
        path = tempfile.mkdtemp(prefix='vmsnap-', dir=directory)
        try:
            os.chmod(path, 0o711)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            LOG.debug('Removed snapshot workspace %s', path)
