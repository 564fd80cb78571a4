"""A format-independent content digest: sha256 of the virtual disk's bytes.

The same disk gives the same digest whether it is stored as raw, qcow2 or
compressed qcow2, however its clusters are laid out, so a restore can be
checked against the snapshot it came from.  Runs that read as zeros are
hashed as zeros without being read.
"""

import hashlib
from typing import Callable, List, Optional

from vmsnap_driver import nbd
from vmsnap_driver import qemu_nbd

ALGORITHM = 'sha256'
ZEROS = bytes(4 * 1024 * 1024)

Reader = Callable[[int, int], bytes]


class ContentDigest:
    """sha256 of a disk's content, fed by ascending, non-overlapping reads.

    Wraps a reader: whatever the encoder reads is hashed as it passes.
    What it skips is hashed too: as zeros, or, given the disk's
    ``extents``, read wherever they say there is data (a delta's encoder
    reads only what changed, but the digest is of the whole disk).
    """

    def __init__(self, read: Reader, size: int,
                 extents: Optional[List[nbd.Extent]] = None) -> None:
        self._read = read
        self._size = size
        self._hash = hashlib.new(ALGORITHM)
        self._position = 0
        self._data = [e for e in extents or () if not e.zero]

    def _zeros(self, length: int) -> None:
        while length > 0:
            n = min(length, len(ZEROS))
            self._hash.update(memoryview(ZEROS)[:n])
            length -= n

    def _skip_to(self, offset: int) -> None:
        """Hash the disk up to ``offset``: its data read, the rest zeros."""
        while self._data and self._position < offset:
            extent = self._data[0]
            end = extent.offset + extent.length
            if end <= self._position:
                self._data.pop(0)
                continue
            start = max(extent.offset, self._position)
            if start >= offset:
                break
            self._zeros(start - self._position)
            n = min(end, offset, start + len(ZEROS)) - start
            self._hash.update(self._read(start, n))
            self._position = start + n
        self._zeros(offset - self._position)
        self._position = offset

    def read(self, offset: int, length: int) -> bytes:
        if offset < self._position:
            raise ValueError('reads must be ascending for the digest')
        self._skip_to(offset)
        data = self._read(offset, length)
        self._hash.update(data)
        self._position = offset + len(data)
        return data

    def hexdigest(self) -> str:
        """The digest, once everything was read."""
        self._skip_to(self._size)
        return self._hash.hexdigest()


def of_export(client: nbd.Client) -> str:
    """The digest of a whole NBD export, reading only its data runs."""
    return ContentDigest(client.read, client.size,
                         client.extents()).hexdigest()


def of_file(path: str, image_format: str, untrusted: bool = False) -> str:
    """The digest of an image file's virtual disk (its backing included).

    :param untrusted: the file came from Glance (and passed
        image_safety): read it under resource limits.
    """
    with qemu_nbd.serve(path, image_format, untrusted) as sock:
        with nbd.Client(sock, qemu_nbd.EXPORT) as client:
            return of_export(client)
