"""A private scratch directory for one snapshot, checked for room first.

Checking free space before writing turns a disk-full failure halfway
through a long copy, which could also starve the guests sharing that
filesystem, into an immediate, explicit error.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from oslo_log import log as logging

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

MIB = 1024 * 1024
# qcow2 metadata and filesystem overhead on top of the data estimate.
MARGIN = 64 * MIB


def check_space(directory: str, needed_bytes: int) -> None:
    """Fail now, not halfway through a long copy, when room is short."""
    needed = needed_bytes + MARGIN
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise exception.InsufficientSpace(directory=directory,
                                          needed_mib=needed // MIB,
                                          free_mib=free // MIB)


@contextlib.contextmanager
def workspace(directory: str, needed_bytes: int) -> Iterator[str]:
    """Yield a new directory under ``directory``; remove it on exit.

    The directory is 0711: QEMU, running as another user, must reach a
    block copy's destination inside it, but may not list it.
    """
    os.makedirs(directory, mode=0o711, exist_ok=True)
    check_space(directory, needed_bytes)
    path = tempfile.mkdtemp(prefix='vmsnap-', dir=directory)
    try:
        os.chmod(path, 0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        LOG.debug('Removed snapshot workspace %s', path)
