"""Encode a disk into a qcow2 or raw image as a stream, for upload.

``qemu-img convert`` must write a seekable file: for a snapshot, that is a
second full copy of the disk on the host, read again for the upload.  When
the allocation map is known up front (NBD block status), a qcow2's whole
layout is too: header, L1 table, refcounts and L2 tables first, then the
data clusters in guest order.  So the image can be produced front to back,
straight into Glance, reading each allocated byte once and writing none.

The qcow2 produced is version 3, 64 KiB clusters, 16-bit refcounts and no
backing file: what ``qemu-img convert -O qcow2`` makes.  Compressed (given a
:class:`~vmsnap_driver.cluster_codec.Codec`), it is what ``qemu-img convert
-c -O qcow2`` makes, laid out so that it can still be sent front to back:
the clusters kept as they are first, then every compressed cluster packed
byte after byte.  That needs each cluster's compressed size before the
header is sent, so the data is compressed twice (see
:mod:`vmsnap_driver.cluster_codec`); the encoder falls back to an
uncompressed image, before a byte is sent, when a sample shows that
compressing does not pay.

A *delta* (:func:`qcow2_delta`) is the same file holding only the clusters
that changed since a checkpoint: a changed cluster that now reads as zeros
is a zero cluster (QCOW_OFLAG_ZERO, no data), an unchanged one is
unallocated.  It names no backing file (Glance refuses one); put on its
parent as backing, it reads as the disk did at its checkpoint.
"""

import array
import dataclasses
import itertools
import queue
import struct
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver import cluster_codec
from vmsnap_driver import exception
from vmsnap_driver import nbd

LOG = logging.getLogger(__name__)

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8
REFCOUNT_ORDER = 4                     # 16-bit refcounts
REFCOUNTS_PER_BLOCK = CLUSTER * 8 >> REFCOUNT_ORDER
QCOW2_MAGIC = 0x514649FB
COPIED = 1 << 63                       # refcount is exactly one
COMPRESSED = 1 << 62                   # QCOW_OFLAG_COMPRESSED
# A compressed cluster's entry: its byte offset below this bit, the number
# of 512-byte sectors it spans, less one, from it up.
SECTORS_SHIFT = 62 - (CLUSTER_BITS - 8)
ZERO_CLUSTER = 1                       # QCOW_OFLAG_ZERO: reads as zeros
HEADER = struct.Struct('>IIQIIQIIQQIIQQQQII')
# Version 3's header with its compression_type byte, padded to 8 bytes;
# a type other than zlib sets this incompatible feature bit.
HEADER_WITH_TYPE = struct.Struct(HEADER.format + 'B7x')
INCOMPAT_COMPRESSION = 1 << 3

# Data is read and handed to the upload in pieces of this size.
PIECE = 4 * 1024 * 1024
ZEROS = bytes(PIECE)

Reads = nbd.Reads


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _spans(offset: int, end: int) -> Iterator[Tuple[int, int]]:
    """[offset, end) in pieces of PIECE at most."""
    while offset < end:
        n = min(end - offset, PIECE)
        yield offset, n
        offset += n


def _zeros(length: int) -> Iterator[bytes]:
    for _offset, n in _spans(0, length):
        yield ZEROS[:n]


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


def raw(virtual_size: int, extents: List[nbd.Extent], reads: Reads,
        codec: Optional[cluster_codec.Codec] = None,
        rereads: Optional[Reads] = None) -> Encoded:
    """Every byte of the disk; zero runs are produced without reading.

    :param codec: must be None: a raw image has nothing to compress into.
    :param rereads: unused; the encoders share one signature.
    """
    if codec is not None:
        raise ValueError('a raw image cannot be compressed')
    _check_sectors(virtual_size, extents)

    def chunks() -> Iterator[bytes]:
        data = reads(piece for extent in extents if not extent.zero
                     for piece in _spans(extent.offset,
                                         extent.offset + extent.length))
        for extent in extents:
            if extent.zero:
                yield from _zeros(extent.length)
            else:
                for _piece in _spans(extent.offset,
                                     extent.offset + extent.length):
                    yield next(data)
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
    # Host clusters after the metadata: the data, stored or packed.
    data_clusters: int

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


def qcow2_layout(virtual_size: int, runs: Runs, zero_runs: Runs = (),
                 data_clusters: Optional[int] = None) -> Qcow2Layout:
    """The layout of ``runs``, by default each data cluster stored whole.

    :param data_clusters: the host clusters the data takes, when packed.
    """
    if data_clusters is None:
        data_clusters = sum(count for _first, count in runs)
    guest_clusters = _ceil_div(virtual_size, CLUSTER)
    l1_size = _ceil_div(guest_clusters, L2_ENTRIES)
    l2_indexes = sorted({index for first, count in list(runs) + list(
        zero_runs) for index in range(first // L2_ENTRIES,
                                      (first + count - 1) // L2_ENTRIES + 1)})
    l1_clusters = _ceil_div(l1_size * 8, CLUSTER)
    # Refcount blocks count every cluster, themselves included: grow them
    # until they cover the file they are part of.
    fixed = 1 + l1_clusters + len(l2_indexes) + data_clusters
    blocks = table = 0
    while True:
        new_blocks = _ceil_div(fixed + blocks + table, REFCOUNTS_PER_BLOCK)
        new_table = _ceil_div(new_blocks * 8, CLUSTER)
        if (new_blocks, new_table) == (blocks, table):
            break
        blocks, table = new_blocks, new_table
    return Qcow2Layout(virtual_size, runs, list(zero_runs), l1_size,
                       l1_clusters, l2_indexes, blocks, table, data_clusters)


def _pieces(runs: Runs, virtual_size: int) -> Iterator[Tuple[int, int]]:
    """(offset, length) of the data in ``runs``, PIECE at most each."""
    for first, count in runs:
        yield from _spans(first * CLUSTER,
                          min((first + count) * CLUSTER, virtual_size))


class _Stored:
    """Each data cluster as it is, one host cluster each, in guest order."""

    def __init__(self, runs: Runs, virtual_size: int, reads: Reads) -> None:
        self._runs = runs
        self._virtual_size = virtual_size
        self._reads = reads
        self.clusters = sum(count for _first, count in runs)
        self.compression_type = 0

    def entries(self, data_at: int) -> Iterator[int]:
        for n in range(self.clusters):
            yield ((data_at + n) * CLUSTER) | COPIED

    def refcounts(self) -> bytes:
        return struct.pack('>H', 1) * self.clusters

    def chunks(self) -> Iterator[bytes]:
        for data in self._reads(_pieces(self._runs, self._virtual_size)):
            yield data
            if len(data) % CLUSTER:
                yield bytes(CLUSTER - len(data) % CLUSTER)


class _Packed:
    """Clusters kept whole first, then the compressed ones, byte by byte.

    Built from the first pass's codes (one per data cluster, guest order);
    the chunks are the second pass, which compresses again and must find
    the same sizes.
    """

    def __init__(self, runs: Runs, virtual_size: int, reads: Reads,
                 codec: cluster_codec.Codec, codes: array.array) -> None:
        self._runs = runs
        self._virtual_size = virtual_size
        self._reads = reads
        self._codec = codec
        self._codes = codes
        self.compression_type = codec.type_code
        self.stored = codes.count(cluster_codec.STORED)
        self.packed_bytes = sum(code for code in codes if code not in (
            cluster_codec.STORED, cluster_codec.ZERO))
        self.clusters = self.stored + _ceil_div(self.packed_bytes, CLUSTER)

    def entries(self, data_at: int) -> Iterator[int]:
        stored = 0
        position = (data_at + self.stored) * CLUSTER
        for code in self._codes:
            if code == cluster_codec.ZERO:
                yield ZERO_CLUSTER
            elif code == cluster_codec.STORED:
                yield ((data_at + stored) * CLUSTER) | COPIED
                stored += 1
            else:
                sectors = ((position + code - 1) // SECTOR
                           - position // SECTOR)
                yield COMPRESSED | (sectors << SECTORS_SHIFT) | position
                position += code

    def refcounts(self) -> bytes:
        """One for a stored cluster; a packed cluster's, one per user.

        A compressed cluster uses every host cluster from its first byte to
        the end of its last sector (what ``qemu-img check`` counts).
        """
        counts = array.array('H', bytes(2 * (self.clusters - self.stored)))
        position = 0
        for code in self._codes:
            if code in (cluster_codec.STORED, cluster_codec.ZERO):
                continue
            end = _ceil_div(position + code, SECTOR) * SECTOR
            for host in range(position // CLUSTER, (end - 1) // CLUSTER + 1):
                counts[host] += 1
            position += code
        counts.byteswap()
        return struct.pack('>H', 1) * self.stored + counts.tobytes()

    def _pieces_with(self, wanted: Callable[[int], bool]) -> Iterator[
            Tuple[int, int, int]]:
        """(offset, length, first index) of the pieces with a wanted code."""
        index = 0
        for offset, length in _pieces(self._runs, self._virtual_size):
            count = _ceil_div(length, CLUSTER)
            if any(wanted(code) for code in self._codes[index:index + count]):
                yield offset, length, index
            index += count

    def _read_pieces_with(self, wanted: Callable[[int], bool]) -> Iterator[
            Tuple[Tuple[int, int, int], bytes]]:
        """Each piece holding a wanted cluster, and its bytes."""
        ahead, here = itertools.tee(self._pieces_with(wanted))
        return zip(here, self._reads((offset, length)
                                     for offset, length, _ in ahead))

    def chunks(self) -> Iterator[bytes]:
        for (_offset, length, index), data in self._read_pieces_with(
                lambda code: code == cluster_codec.STORED):
            for n in range(_ceil_div(length, CLUSTER)):
                if self._codes[index + n] == cluster_codec.STORED:
                    cluster = data[n * CLUSTER:(n + 1) * CLUSTER]
                    yield cluster + bytes(CLUSTER - len(cluster))
        packed = cluster_codec.ordered_map(
            lambda item: (item[0], self._codec.packed(item[1])),
            self._read_pieces_with(lambda code: code not in (
                cluster_codec.STORED, cluster_codec.ZERO)),
            cluster_codec.workers())
        for (offset, _length, index), clusters in packed:
            for n, data in enumerate(clusters):
                code = self._codes[index + n]
                if code in (cluster_codec.STORED, cluster_codec.ZERO):
                    continue
                if len(data) != code:
                    raise StreamError(reason=(
                        'the cluster at %d compressed to %d bytes, then to '
                        '%d: the disk changed under its export'
                        % (offset + n * CLUSTER, code, len(data))))
                yield data
        yield bytes(-self.packed_bytes % CLUSTER)


def _worth_packing(runs: Runs, virtual_size: int, reads: Reads,
                   codec: cluster_codec.Codec) -> bool:
    """Whether a sample of the data, spread over the disk, compresses."""
    pieces = list(_pieces(runs, virtual_size))
    if len(pieces) <= cluster_codec.SAMPLE_PIECES:
        return True
    sample = [pieces[i * len(pieces) // cluster_codec.SAMPLE_PIECES]
              for i in range(cluster_codec.SAMPLE_PIECES)]
    before = after = 0
    for codes in cluster_codec.ordered_map(
            codec.codes, reads(sample),
            cluster_codec.workers()):
        before += len(codes) * CLUSTER
        after += sum(CLUSTER if code == cluster_codec.STORED
                     else 0 if code == cluster_codec.ZERO else code
                     for code in codes)
    LOG.debug('A sample of %(before)d bytes compresses to %(after)d',
              {'before': before, 'after': after})
    return after <= cluster_codec.WORTH * before


def _placement(runs: Runs, virtual_size: int, reads: Reads,
               codec: Optional[cluster_codec.Codec],
               rereads: Optional[Reads]) -> Any:
    """How the data clusters are stored: packed when compressing pays.

    The first pass reads through ``reads`` in disk order (a digest may be
    watching it); the sample and the second pass through ``rereads``.
    """
    if codec is None:
        return _Stored(runs, virtual_size, reads)
    if not _worth_packing(runs, virtual_size, rereads, codec):
        LOG.info('The disk\'s data does not compress (a sample of it saves '
                 'less than %d%%): the image is stored uncompressed',
                 round(100 * (1 - cluster_codec.WORTH)))
        return _Stored(runs, virtual_size, reads)
    started = time.monotonic()
    codes = array.array('H')
    for piece_codes in cluster_codec.ordered_map(
            codec.codes, reads(_pieces(runs, virtual_size)),
            cluster_codec.workers()):
        codes.extend(piece_codes)
    packed = _Packed(runs, virtual_size, rereads, codec, codes)
    LOG.info('%(kind)s: %(data)d MiB of data compress to %(image)d MiB '
             '(%(stored)d clusters kept as they are), measured in %(s).1f s',
             {'kind': codec.kind, 'data': len(codes) * CLUSTER >> 20,
              'image': packed.clusters * CLUSTER >> 20,
              'stored': packed.stored, 's': time.monotonic() - started})
    return packed


def qcow2(virtual_size: int, extents: List[nbd.Extent], reads: Reads,
          codec: Optional[cluster_codec.Codec] = None,
          rereads: Optional[Reads] = None) -> Encoded:
    """A flat qcow2 holding the disk's data clusters, laid out in order.

    :param codec: compress the clusters with it; then ``rereads`` reads
        the disk again, out of order.
    """
    _check_sectors(virtual_size, extents)
    if codec is not None and rereads is None:
        raise ValueError('compressing reads the disk again: rereads needed')
    runs = _cluster_runs(extents)
    return _qcow2(virtual_size, runs, [], _placement(
        runs, virtual_size, reads, codec, rereads))


def qcow2_delta(virtual_size: int, extents: List[nbd.Extent],
                changed: List[nbd.Extent], reads: Reads,
                codec: Optional[cluster_codec.Codec] = None) -> Encoded:
    """A qcow2 of the clusters in ``changed`` only (see the module doc).

    :param extents: the disk's data and zero runs now.
    :param changed: the runs changed since the checkpoint.
    :param codec: compress the clusters with it.
    """
    _check_sectors(virtual_size, extents)
    with_data, zeroed = _split(_cluster_runs(changed),
                               _cluster_runs(extents))
    return _qcow2(virtual_size, with_data, zeroed, _placement(
        with_data, virtual_size, reads, codec, reads))


def _qcow2(virtual_size: int, runs: Runs, zero_runs: Runs,
           placement: Any) -> Encoded:
    layout = qcow2_layout(virtual_size, runs, zero_runs, placement.clusters)

    def padded(payload: bytes, clusters: int) -> bytes:
        return payload + bytes(clusters * CLUSTER - len(payload))

    def header() -> bytes:
        fields = [QCOW2_MAGIC, 3, 0, 0, CLUSTER_BITS, virtual_size, 0,
                  layout.l1_size, layout.l1_at * CLUSTER,
                  layout.refcount_table_at * CLUSTER,
                  layout.refcount_table_clusters, 0, 0, 0, 0, 0,
                  REFCOUNT_ORDER, HEADER.size]
        if not placement.compression_type:
            return HEADER.pack(*fields)
        fields[13] = INCOMPAT_COMPRESSION
        fields[-1] = HEADER_WITH_TYPE.size
        return HEADER_WITH_TYPE.pack(*fields, placement.compression_type)

    def chunks() -> Iterator[bytes]:
        yield padded(header(), 1)
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
        yield padded(struct.pack('>H', 1) * layout.data_at
                     + placement.refcounts(), blocks)
        yield from _l2_tables(layout, placement.entries(layout.data_at))
        yield from placement.chunks()

    data_bytes = sum(min(count * CLUSTER, virtual_size - first * CLUSTER)
                     for first, count in runs)
    return Encoded(layout.total_clusters * CLUSTER, chunks(), data_bytes)


def _l2_tables(layout: Qcow2Layout,
               entries: Iterator[int]) -> Iterator[bytes]:
    """Map each data cluster, in guest order, to its ``entries``' next.

    Zero runs are marked as reading zeros; every other entry stays 0
    (unallocated: it reads from a backing file, or as zeros without one).
    """
    runs = sorted([(first, count, True) for first, count in layout.runs]
                  + [(first, count, False)
                     for first, count in layout.zero_runs])
    i = 0
    for index in layout.l2_indexes:
        table_start = index * L2_ENTRIES
        table_end = table_start + L2_ENTRIES
        table = [0] * L2_ENTRIES
        while i < len(runs) and runs[i][0] < table_end:
            first, count, data = runs[i]
            for guest in range(max(first, table_start),
                               min(first + count, table_end)):
                table[guest - table_start] = (next(entries) if data
                                              else ZERO_CLUSTER)
            if first + count > table_end:
                break               # the run goes on in the next table
            i += 1
        yield struct.pack('>%dQ' % L2_ENTRIES, *table)


ENCODERS = {'qcow2': qcow2, 'raw': raw}


def codec(compression_type: str) -> Optional[cluster_codec.Codec]:
    """The codec of a qcow2 compression type; None for '' (none)."""
    return (cluster_codec.Codec(compression_type, CLUSTER)
            if compression_type else None)


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
        self._chunks = chunks
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
        """Stop the producer and wait for it: it may hold a connection.

        The chunks' generator is closed too, so that what it holds (reads
        in flight, compression threads) ends now, not when it is collected.
        """
        self._stopped.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
        close = getattr(self._chunks, 'close', None)
        if close is not None:
            close()
        self._error = None
