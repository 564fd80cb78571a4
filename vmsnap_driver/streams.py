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
        # Where the next read starts in ``_pending``: readers ask for
        # small pieces (tarfile 16 KiB), and cutting what is left of a
        # large chunk on every read would copy it again each time.
        self._offset = 0

    def _next(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._progress(len(chunk))
        self._pending = chunk
        self._offset = 0
        return True

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes, fewer only at the end (tarfile needs that)."""
        if size < 0:
            if self._offset >= len(self._pending) and not self._next():
                return b''
            data = self._pending[self._offset:]
            self._offset = len(self._pending)
            return data
        parts = []
        wanted = size
        while wanted:
            if self._offset >= len(self._pending) and not self._next():
                break
            part = self._pending[self._offset:self._offset + wanted]
            self._offset += len(part)
            wanted -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else b''.join(parts)

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


class CountingReader:
    """A file whose reads ``count`` their bytes; all else is the file's.

    ``seek`` passes through when the file has it, so that a retried
    upload can start again (and then counts again from its start).
    """

    def __init__(self, f: Any, count: Callable[[int], None]) -> None:
        self._f = f
        self._count = count

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._count(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
