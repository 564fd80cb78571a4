"""Compress a disk's qcow2 clusters on several threads, as QEMU would.

``qemu-img convert -c`` compresses into a seekable file: for a snapshot that
is a full copy of the disk on the host before the upload begins.  A qcow2
can still be streamed compressed, front to back, but only once every
cluster's compressed size is known, because the L2 tables at the front name
the byte offset of each compressed cluster.  So the streamed encoder
(:mod:`vmsnap_driver.image_stream`) compresses twice: a first pass that
keeps only each cluster's size (two bytes a cluster), then the pass that
sends.  The export holds the disk at one instant and both zlib and zstd
are deterministic for one level and library, so the second pass reads and
compresses what the first did; a compressed size that differs all the
same fails the snapshot rather than the image's layout.

A sample of the disk is compressed first: when it does not pay (random or
already compressed data), the image is stored uncompressed after one cheap
look, instead of after a whole pass.

Written here because no library on PyPI writes qcow2's compressed clusters:
raw deflate with a 4 KiB window for zlib (QEMU inflates with windowBits
-12), one zstd frame per cluster for zstd (``compression_type=zstd``, QEMU
5.1 and later).  Both codecs release the GIL, so the threads run on every
core.
"""

import collections
import concurrent.futures
import os
import threading
import zlib
from typing import Callable, Iterable, Iterator, List, Optional, TypeVar

import zstandard

# What the qcow2 header's compression_type byte says for each.
TYPES = {'zlib': 0, 'zstd': 1}
# Level 1 of either: measured on this project's 2-core hosts on a Debian
# root filesystem, zstd -1 compresses 64 KiB clusters 1.7 x faster than
# zstd -3 for a 5 % larger image, zlib -1 1.5 x faster than zlib -6.
LEVELS = {'zlib': 1, 'zstd': 1}
# A cluster is stored compressed only when that saves at least this part
# of it: else reading it back would cost a decompression for next to
# nothing.
MIN_SAVING = 1 / 16
# Codes of a cluster in the first pass, two bytes each, besides a
# compressed size (always smaller than the cluster, at most 64 KiB).
STORED = 0
ZERO = 0xFFFF
# Compressing a sample costs at most this many pieces of the disk.
SAMPLE_PIECES = 32
# The image is compressed when the sample shrinks to at most this fraction.
WORTH = 0.9

T = TypeVar('T')
R = TypeVar('R')


def workers() -> int:
    """Compression threads: every core, at most 4 (one upload's worth)."""
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T],
                threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads``, results in order.

    Unlike ``Executor.map``, at most two items a thread are in flight, so
    memory stays bounded whatever the disk size.
    """
    with concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix='compress') as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class Codec:
    """One qcow2 compression type, one compressor per thread."""

    def __init__(self, kind: str, cluster: int) -> None:
        if kind not in TYPES:
            raise ValueError('unknown qcow2 compression type %r' % kind)
        self.kind = kind
        self.type_code = TYPES[kind]
        if cluster > 1 << 16:
            raise ValueError('cluster codes are two bytes: at most 64 KiB')
        self._cluster = cluster
        self._max_packed = int(cluster * (1 - MIN_SAVING))
        self._zeros = bytes(cluster)
        self._local = threading.local()

    def _compress(self, data: bytes) -> bytes:
        if self.kind == 'zstd':
            compressor = getattr(self._local, 'zstd', None)
            if compressor is None:
                compressor = self._local.zstd = zstandard.ZstdCompressor(
                    level=LEVELS['zstd'])
            return compressor.compress(data)
        deflate = zlib.compressobj(LEVELS['zlib'], zlib.DEFLATED, -12, 9)
        return deflate.compress(data) + deflate.flush()

    def _clusters(self, piece: bytes) -> Iterator[bytes]:
        for start in range(0, len(piece), self._cluster):
            cluster = piece[start:start + self._cluster]
            if len(cluster) < self._cluster:
                # QEMU inflates a whole cluster, even the disk's last.
                cluster += bytes(self._cluster - len(cluster))
            yield cluster

    def packed(self, piece: bytes) -> List[Optional[bytes]]:
        """Each cluster compressed.

        None for a zero cluster, b'' for one stored as it is.
        """
        out: List[Optional[bytes]] = []
        for cluster in self._clusters(piece):
            if cluster == self._zeros:
                out.append(None)
                continue
            data = self._compress(cluster)
            out.append(data if len(data) <= self._max_packed else b'')
        return out

    def codes(self, piece: bytes) -> List[int]:
        """Each cluster's code: ZERO, STORED or its compressed size."""
        return [ZERO if data is None else len(data) or STORED
                for data in self.packed(piece)]
