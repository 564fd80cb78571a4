"""File objects over the byte streams vmsnap moves without holding them.

Glance serves an image as an iterator of chunks; zstd, tarfile and
requests want file objects with ``read``.  These two adapters let bytes
flow from one to the other in bounded memory, counted and hashed on the
way.
"""

import hashlib
from typing import Any, Callable, Iterable, Iterator

# What an iteration over a body reads at once.
CHUNK = 4 * 1024 * 1024


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
    """An upload body whose reads ``count`` their bytes.

    It has the length it will give (requests sends a Content-Length from
    it: without one it adds a chunked encoding, which Glance refuses beside
    the Content-Length vmsnap sends).
    """

    def __init__(self, f: Any, size: int,
                 count: Callable[[int], None]) -> None:
        self._f = f
        self._size = size
        self._count = count
        self.counted = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.counted += len(data)
        self._count(len(data))
        return data

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            yield data


class SeekableCountingReader(CountingReader):
    """The same over a file: a retried upload starts it again."""

    def seek(self, *args: Any) -> int:
        """Back to the start: what was counted is uncounted."""
        position = self._f.seek(*args)
        if position == 0:
            self._count(-self.counted)
            self.counted = 0
        return position

    def tell(self) -> int:
        return self._f.tell()


def counting(f: Any, size: int,
             count: Callable[[int], None]) -> CountingReader:
    """``f`` as an upload body that counts what is read of it."""
    kind = SeekableCountingReader if hasattr(f, 'seek') else CountingReader
    return kind(f, size, count)
