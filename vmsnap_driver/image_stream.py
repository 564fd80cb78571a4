"""Encode a disk into a qcow2 or raw image as a stream, for upload.

``qemu-img convert`` must write a seekable file: for a snapshot, that is a
second full copy of the disk on the host, read again for the upload.  When
the allocation map is known up front (NBD block status), a qcow2's whole
layout is too: header, L1 table, refcounts and L2 tables first, then the
data clusters in guest order.  So the image can be produced front to back,
straight into Glance, reading each allocated byte once and writing none.

The qcow2 produced is version 3, 64 KiB clusters, 16-bit refcounts, no
backing file and no compression: what ``qemu-img convert -O qcow2`` makes.

A *delta* (:func:`qcow2_delta`) is the same file holding only the clusters
that changed since a checkpoint: a changed cluster that now reads as zeros
is a zero cluster (QCOW_OFLAG_ZERO, no data), an unchanged one is
unallocated.  It names no backing file (Glance refuses one); put on its
parent as backing, it reads as the disk did at its checkpoint.
"""

import dataclasses
import queue
import struct
import threading
from typing import Callable, Iterator, List, Tuple

from vmsnap_driver import exception
from vmsnap_driver import nbd

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
REFCOUNT_ORDER = 4                     # 16-bit refcounts
REFCOUNTS_PER_BLOCK = CLUSTER * 8 >> REFCOUNT_ORDER
QCOW2_MAGIC = 0x514649FB
COPIED = 1 << 63                       # refcount is exactly one
ZERO_CLUSTER = 1                       # QCOW_OFLAG_ZERO: reads as zeros
HEADER = struct.Struct('>IIQIIQIIQQIIQQQQII')

# Data is read and handed to the upload in pieces of this size.
PIECE = 4 * 1024 * 1024
ZEROS = bytes(PIECE)

Reader = Callable[[int, int], bytes]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _zeros(length: int) -> Iterator[bytes]:
    while length > 0:
        n = min(length, PIECE)
        yield ZEROS[:n]
        length -= n


def _data(read: Reader, offset: int, length: int) -> Iterator[bytes]:
    end = offset + length
    while offset < end:
        n = min(end - offset, PIECE)
        yield read(offset, n)
        offset += n


@dataclasses.dataclass(frozen=True)
class Encoded:
    """An image being produced: its exact size and its bytes, in order."""

    size: int
    chunks: Iterator[bytes]
    data_bytes: int


# Disks, and so the extents of an export, come in 512-byte sectors.
SECTOR = 512


def _check_sectors(virtual_size: int, extents: List[nbd.Extent]) -> None:
    """Refuse a layout that is not whole sectors, before a byte is sent.

    A qcow2 header can only state a size in whole sectors, and QEMU never
    reports a finer extent: anything else is a bug upstream, which would
    otherwise shift data silently.
    """
    if virtual_size % SECTOR:
        raise ValueError('disk size %d is not a multiple of %d'
                         % (virtual_size, SECTOR))
    for extent in extents:
        if extent.offset % SECTOR or extent.length % SECTOR:
            raise ValueError('extent %s is not sector-aligned' % (extent,))


def raw(virtual_size: int, extents: List[nbd.Extent],
        read: Reader) -> Encoded:
    """Every byte of the disk; zero runs are produced without reading."""
    _check_sectors(virtual_size, extents)

    def chunks() -> Iterator[bytes]:
        for extent in extents:
            if extent.zero:
                yield from _zeros(extent.length)
            else:
                yield from _data(read, extent.offset, extent.length)
    return Encoded(virtual_size, chunks(),
                   sum(e.length for e in extents if not e.zero))


Runs = List[Tuple[int, int]]


def _cluster_runs(extents: List[nbd.Extent]) -> Runs:
    """(first cluster, count) of clusters holding any data, merged."""
    runs: Runs = []
    for extent in extents:
        if extent.zero or not extent.length:
            continue
        first = extent.offset >> CLUSTER_BITS
        last = (extent.offset + extent.length - 1) >> CLUSTER_BITS
        if runs and runs[-1][0] + runs[-1][1] >= first:
            start, count = runs[-1]
            runs[-1] = (start, max(count, last + 1 - start))
        else:
            runs.append((first, last + 1 - first))
    return runs


def _split(changed: Runs, data: Runs) -> Tuple[Runs, Runs]:
    """``changed`` cut into the clusters that hold data and the others."""
    with_data: Runs = []
    without: Runs = []
    data = list(data)
    i = 0
    for first, count in changed:
        end = first + count
        position = first
        while position < end:
            while i < len(data) and sum(data[i]) <= position:
                i += 1
            if i < len(data) and data[i][0] <= position:
                stop = min(end, sum(data[i]))
                with_data.append((position, stop - position))
            else:
                stop = min(end, data[i][0]) if i < len(data) else end
                without.append((position, stop - position))
            position = stop
    return with_data, without


@dataclasses.dataclass(frozen=True)
class Qcow2Layout:
    """Where everything goes in the streamed qcow2, in clusters."""

    virtual_size: int
    runs: Runs
    # Clusters that read as zeros without data (a delta's only).
    zero_runs: Runs
    l1_size: int
    l1_clusters: int
    l2_indexes: List[int]
    refcount_blocks: int
    refcount_table_clusters: int

    @property
    def data_clusters(self) -> int:
        return sum(count for _first, count in self.runs)

    @property
    def l1_at(self) -> int:
        return 1

    @property
    def refcount_table_at(self) -> int:
        return self.l1_at + self.l1_clusters

    @property
    def refcount_blocks_at(self) -> int:
        return self.refcount_table_at + self.refcount_table_clusters

    @property
    def l2_at(self) -> int:
        return self.refcount_blocks_at + self.refcount_blocks

    @property
    def data_at(self) -> int:
        return self.l2_at + len(self.l2_indexes)

    @property
    def total_clusters(self) -> int:
        return self.data_at + self.data_clusters


def qcow2_layout(virtual_size: int, runs: Runs,
                 zero_runs: Runs = ()) -> Qcow2Layout:
    guest_clusters = _ceil_div(virtual_size, CLUSTER)
    l1_size = _ceil_div(guest_clusters, L2_ENTRIES)
    l2_indexes = sorted({index for first, count in list(runs) + list(
        zero_runs) for index in range(first // L2_ENTRIES,
                                      (first + count - 1) // L2_ENTRIES + 1)})
    l1_clusters = _ceil_div(l1_size * 8, CLUSTER)
    # Refcount blocks count every cluster, themselves included: grow them
    # until they cover the file they are part of.
    fixed = (1 + l1_clusters + len(l2_indexes)
             + sum(count for _first, count in runs))
    blocks = table = 0
    while True:
        new_blocks = _ceil_div(fixed + blocks + table, REFCOUNTS_PER_BLOCK)
        new_table = _ceil_div(new_blocks * 8, CLUSTER)
        if (new_blocks, new_table) == (blocks, table):
            break
        blocks, table = new_blocks, new_table
    return Qcow2Layout(virtual_size, runs, list(zero_runs), l1_size,
                       l1_clusters, l2_indexes, blocks, table)


def qcow2(virtual_size: int, extents: List[nbd.Extent],
          read: Reader) -> Encoded:
    """A flat qcow2 holding the disk's data clusters, laid out in order."""
    _check_sectors(virtual_size, extents)
    return _qcow2(qcow2_layout(virtual_size, _cluster_runs(extents)), read)


def qcow2_delta(virtual_size: int, extents: List[nbd.Extent],
                changed: List[nbd.Extent], read: Reader) -> Encoded:
    """A qcow2 of the clusters in ``changed`` only (see the module doc).

    :param extents: the disk's data and zero runs now.
    :param changed: the runs changed since the checkpoint.
    """
    _check_sectors(virtual_size, extents)
    with_data, zeroed = _split(_cluster_runs(changed),
                               _cluster_runs(extents))
    return _qcow2(qcow2_layout(virtual_size, with_data, zeroed), read)


def _qcow2(layout: Qcow2Layout, read: Reader) -> Encoded:
    virtual_size = layout.virtual_size

    def padded(payload: bytes, clusters: int) -> bytes:
        return payload + bytes(clusters * CLUSTER - len(payload))

    def chunks() -> Iterator[bytes]:
        yield padded(HEADER.pack(
            QCOW2_MAGIC, 3, 0, 0, CLUSTER_BITS, virtual_size, 0,
            layout.l1_size, layout.l1_at * CLUSTER,
            layout.refcount_table_at * CLUSTER,
            layout.refcount_table_clusters, 0, 0, 0, 0, 0, REFCOUNT_ORDER,
            HEADER.size), 1)
        l1 = [0] * layout.l1_size
        for n, index in enumerate(layout.l2_indexes):
            l1[index] = ((layout.l2_at + n) * CLUSTER) | COPIED
        yield padded(struct.pack('>%dQ' % layout.l1_size, *l1),
                     layout.l1_clusters)
        blocks = layout.refcount_blocks
        yield padded(struct.pack(
            '>%dQ' % blocks,
            *[(layout.refcount_blocks_at + n) * CLUSTER
              for n in range(blocks)]), layout.refcount_table_clusters)
        yield padded(struct.pack('>H', 1) * layout.total_clusters, blocks)
        yield from _l2_tables(layout)
        for first, count in layout.runs:
            offset = first * CLUSTER
            length = min(count * CLUSTER, virtual_size - offset)
            yield from _data(read, offset, length)
            yield bytes(count * CLUSTER - length)

    data_bytes = sum(min(count * CLUSTER, virtual_size - first * CLUSTER)
                     for first, count in layout.runs)
    return Encoded(layout.total_clusters * CLUSTER, chunks(), data_bytes)


def _l2_tables(layout: Qcow2Layout) -> Iterator[bytes]:
    """Map each data cluster, in guest order, to the next host cluster.

    Zero runs are marked as reading zeros; every other entry stays 0
    (unallocated: it reads from a backing file, or as zeros without one).
    """
    host = layout.data_at
    runs = sorted([(first, count, True) for first, count in layout.runs]
                  + [(first, count, False)
                     for first, count in layout.zero_runs])
    i = 0
    for index in layout.l2_indexes:
        table_start = index * L2_ENTRIES
        table_end = table_start + L2_ENTRIES
        entries = [0] * L2_ENTRIES
        while i < len(runs) and runs[i][0] < table_end:
            first, count, data = runs[i]
            for guest in range(max(first, table_start),
                               min(first + count, table_end)):
                if data:
                    entries[guest - table_start] = (host * CLUSTER) | COPIED
                    host += 1
                else:
                    entries[guest - table_start] = ZERO_CLUSTER
            if first + count > table_end:
                break               # the run goes on in the next table
            i += 1
        yield struct.pack('>%dQ' % L2_ENTRIES, *entries)


ENCODERS = {'qcow2': qcow2, 'raw': raw}


class StreamError(exception.VmsnapException):
    msg_fmt = 'Reading the disk for the image failed: %(reason)s'


class Prefetcher:
    """A file-like view of chunks produced by a thread, read by another.

    glanceclient reads the upload body with ``read()``; a background thread
    keeps up to ``depth`` chunks ready, so reading the disk overlaps with
    sending over HTTP while memory stays bounded.
    """

    _DONE = object()

    def __init__(self, chunks: Iterator[bytes], size: int,
                 depth: int = 8) -> None:
        self._size = size
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error = None
        self._buffer = memoryview(b'')
        self._item = b''
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(chunks,),
                                        name='image-stream', daemon=True)
        self._thread.start()

    def _produce(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                while not self._stopped.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stopped.is_set():
                    return
        except BaseException as e:  # handed to the reading thread
            # As an error an HTTP client cannot mistake for the server
            # closing the connection (urllib3 swallows ECONNRESET and
            # EPIPE from a body and waits for an answer).
            self._error = e if not isinstance(e, OSError) else (
                StreamError(reason=str(e)))
        self._queue.put(self._DONE)

    def __len__(self) -> int:
        """The whole stream's size: HTTP clients send it as Content-Length."""
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(PIECE)
            if not chunk:
                return
            yield chunk

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            item = self._queue.get()
            if item is self._DONE:
                self._queue.put(self._DONE)
                if self._error is not None:
                    raise self._error
                return b''
            self._item = item
            self._buffer = memoryview(item)
        # HTTP clients ask for 8-64 KiB at a time; handing them the whole
        # buffered piece instead (up to 4 MiB, and without copying it) cuts
        # the per-call overhead of a multi-GiB upload by orders of
        # magnitude.
        if size is None or size < 0 or size < len(self._buffer) <= PIECE:
            size = len(self._buffer)
        if size >= len(self._buffer) and len(self._buffer) == len(
                self._item):
            self._buffer = memoryview(b'')
            return self._item
        out = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return bytes(out)

    def close(self) -> None:
        """Stop the producer and wait for it: it may hold a connection."""
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
