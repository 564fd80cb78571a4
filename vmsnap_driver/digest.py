"""A format-independent content digest: sha256 of the virtual disk's bytes.

The same disk gives the same digest whether it is stored as raw, qcow2 or
compressed qcow2, however its clusters are laid out, so a restore can be
checked against the snapshot it came from.  Runs that read as zeros are
hashed as zeros without being read.
"""

import hashlib
from typing import Callable

from vmsnap_driver import nbd
from vmsnap_driver import qemu_nbd

ALGORITHM = 'sha256'
ZEROS = bytes(4 * 1024 * 1024)

Reader = Callable[[int, int], bytes]


class ContentDigest:
    """sha256 of a disk's content, fed by ascending, non-overlapping reads.

    Wraps a reader: whatever the encoder reads is hashed as it passes, and
    the runs it skips (they read as zeros) are hashed as zeros.
    """

    def __init__(self, read: Reader, size: int) -> None:
        self._read = read
        self._size = size
        self._hash = hashlib.new(ALGORITHM)
        self._position = 0

    def _zeros(self, length: int) -> None:
        while length > 0:
            n = min(length, len(ZEROS))
            self._hash.update(memoryview(ZEROS)[:n])
            length -= n

    def read(self, offset: int, length: int) -> bytes:
        if offset < self._position:
            raise ValueError('reads must be ascending for the digest')
        self._zeros(offset - self._position)
        data = self._read(offset, length)
        self._hash.update(data)
        self._position = offset + len(data)
        return data

    def hexdigest(self) -> str:
        """The digest, once everything was read: the tail is zeros."""
        self._zeros(self._size - self._position)
        self._position = self._size
        return self._hash.hexdigest()


def of_export(client: nbd.Client) -> str:
    """The digest of a whole NBD export, reading only its data runs."""
    digest = ContentDigest(client.read, client.size)
    for extent in client.extents():
        if extent.zero:
            continue
        offset = extent.offset
        while offset < extent.offset + extent.length:
            n = min(extent.offset + extent.length - offset, len(ZEROS))
            digest.read(offset, n)
            offset += n
    return digest.hexdigest()


def of_file(path: str, image_format: str, untrusted: bool = False) -> str:
    """The digest of an image file's virtual disk (its backing included).

    :param untrusted: the file came from Glance (and passed
        image_safety): read it under resource limits.
    """
    with qemu_nbd.serve(path, image_format, untrusted) as sock:
        with nbd.Client(sock, qemu_nbd.EXPORT) as client:
            return of_export(client)
