"""File objects over the byte streams vmsnap moves without holding them.

Glance serves an image as an iterator of chunks; zstd, tarfile and
requests want file objects with ``read``.  These two adapters let bytes
flow from one to the other in bounded memory, counted and hashed on the
way.
"""

import hashlib
from typing import Any, Callable, Iterable


class ChunkReader:
    """A file over an iterator of chunks; ``progress`` sees each chunk."""

    def __init__(self, chunks: Iterable[bytes],
                 progress: Callable[[int], None] = lambda _n: None) -> None:
        self._chunks = iter(chunks)
        self._progress = progress
        self._pending = b''

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b''
            self._progress(len(chunk))
            self._pending = chunk
        if size < 0:
            size = len(self._pending)
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def close(self) -> None:
        close = getattr(self._chunks, 'close', None)
        if close:
            close()


class HashingReader:
    """A file whose reads are hashed (and counted) on the way."""

    def __init__(self, f: Any, algorithm: str = 'sha256') -> None:
        self._f = f
        self.hash = hashlib.new(algorithm)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data
