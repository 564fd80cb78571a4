"""The streamed qcow2, read back by a small qcow2 reader of the test's own."""

import os
import struct
import subprocess

import pytest

from tests.unit import planned
from vmsnap_driver import image_stream
from vmsnap_driver import nbd

C = image_stream.CLUSTER
MIB = 1024 * 1024


def pattern(offset, length):
    """Bytes that say where they are: the reader's data is checkable."""
    out = bytearray()
    while len(out) < length:
        out += struct.pack('>Q', (offset + len(out)) // 8 + 1)
    return bytes(out[:length])


def read_qcow2(image, virtual_size):
    """{guest cluster: bytes} of a qcow2 without backing or compression."""
    fields = image_stream.HEADER.unpack(image[:image_stream.HEADER.size])
    assert fields[0] == image_stream.QCOW2_MAGIC and fields[1] == 3
    assert fields[5] == virtual_size
    l1_size, l1_at = fields[7], fields[8]
    clusters = {}
    for i in range(l1_size):
        l2_at = struct.unpack_from('>Q', image, l1_at + 8 * i)[0]
        l2_at &= ~image_stream.COPIED
        if not l2_at:
            continue
        for j in range(C // 8):
            host = struct.unpack_from('>Q', image, l2_at + 8 * j)[0]
            host &= ~image_stream.COPIED
            if host:
                clusters[i * (C // 8) + j] = image[host:host + C]
    return clusters


def refcounts(image):
    fields = image_stream.HEADER.unpack(image[:image_stream.HEADER.size])
    table_at, table_clusters = fields[9], fields[10]
    counts = []
    for i in range(table_clusters * C // 8):
        block = struct.unpack_from('>Q', image, table_at + 8 * i)[0]
        if block:
            counts += struct.unpack_from('>%dH' % (C // 2), image, block)
    return counts


@pytest.mark.parametrize('virtual, extents', [
    # Data in several L2 tables (512 MiB each), a tail shorter than a
    # cluster.
    (1100 * MIB + 512, [(0, 70144), (600 * MIB, 3 * C + 512),
                        (1100 * MIB, 512)]),
    # Nothing but zeros.
    (10 * MIB, []),
])
def test_qcow2_stream_holds_exactly_the_data(virtual, extents):
    data = [nbd.Extent(o, n, False) for o, n in extents]
    encoded = image_stream.qcow2(virtual, data, planned(pattern))
    image = b''.join(encoded.chunks)
    assert len(image) == encoded.size
    # Every cluster touched by data is stored whole, zero-padded past the
    # end of the disk; no other cluster is stored.
    expected = {}
    for offset, length in extents:
        for cluster in range(offset // C, -(-(offset + length) // C)):
            n = min(C, virtual - cluster * C)
            expected[cluster] = pattern(cluster * C, n) + bytes(C - n)
    assert read_qcow2(image, virtual) == expected
    counts = refcounts(image)
    clusters = len(image) // C
    assert counts[:clusters] == [1] * clusters
    assert not any(counts[clusters:])


def test_refcounts_cover_themselves_past_one_block():
    # 40000 data clusters: the file outgrows one refcount block (32768).
    extents = [nbd.Extent(0, 40000 * C, False)]
    layout = image_stream.qcow2_layout(
        40000 * C, image_stream._cluster_runs(extents))
    assert layout.refcount_blocks == 2
    assert layout.refcount_blocks * image_stream.REFCOUNTS_PER_BLOCK >= (
        layout.total_clusters)
    assert layout.refcount_table_clusters * C // 8 >= layout.refcount_blocks


def test_raw_stream_reads_only_data():
    asked = []

    def read(offset, length):
        asked.append((offset, length))
        return pattern(offset, length)
    extents = [nbd.Extent(0, MIB, True), nbd.Extent(MIB, 5120, False),
               nbd.Extent(MIB + 5120, 3072, True)]
    encoded = image_stream.raw(MIB + 8192, extents, planned(read))
    image = b''.join(encoded.chunks)
    assert image == bytes(MIB) + pattern(MIB, 5120) + bytes(3072)
    assert asked == [(MIB, 5120)]
    assert encoded.data_bytes == 5120


@pytest.mark.parametrize('encoder', [image_stream.raw, image_stream.qcow2])
def test_encoders_refuse_what_is_not_whole_sectors(encoder):
    with pytest.raises(ValueError):
        encoder(MIB + 100, [], planned(pattern))
    with pytest.raises(ValueError):
        encoder(MIB, [nbd.Extent(0, 700, False)], planned(pattern))


def test_prefetcher_passes_errors_and_skips_empty_chunks():
    def chunks():
        yield b'ab'
        yield b''
        yield b'cd'
        raise IOError('disk gone')
    body = image_stream.Prefetcher(chunks(), 4, depth=1)
    # A short read hands over the whole buffered piece.
    assert body.read(1) == b'ab'
    assert body.read(5) == b'cd'
    # Never an OSError: HTTP clients take some for the server hanging up.
    with pytest.raises(image_stream.StreamError, match='disk gone'):
        body.read(5)
    body.close()


def test_qcow2_delta_on_its_parent_reads_as_the_new_disk(tmp_path):
    """Changed data stored, changed-to-zero marked, the rest from parent.

    Checked with the real qemu-img: the delta, put on the parent as its
    backing file, converts to exactly the new disk.
    """
    size = 40 * C + 512
    parent = bytearray(os.urandom(size))
    parent[20 * C:30 * C] = bytes(10 * C)           # a hole in the parent
    new = bytearray(parent)
    new[C + 100:C + 200] = os.urandom(100)          # partly rewritten
    new[3 * C:5 * C] = bytes(2 * C)                 # discarded
    new[22 * C:23 * C] = os.urandom(C)              # written into the hole
    new[40 * C:] = os.urandom(512)                  # the short tail
    changed = [nbd.Extent(C, C, False), nbd.Extent(3 * C, 2 * C, False),
               nbd.Extent(22 * C, C, False), nbd.Extent(40 * C, 512, False)]
    extents = [nbd.Extent(0, 3 * C, False), nbd.Extent(3 * C, 2 * C, True),
               nbd.Extent(5 * C, 15 * C, False),
               nbd.Extent(20 * C, 2 * C, True),
               nbd.Extent(22 * C, C, False),
               nbd.Extent(23 * C, 7 * C, True),
               nbd.Extent(30 * C, size - 30 * C, False)]
    encoded = image_stream.qcow2_delta(
        size, extents, changed, planned(lambda o, n: bytes(new[o:o + n])))
    delta = tmp_path / 'delta.qcow2'
    delta.write_bytes(b''.join(encoded.chunks))
    assert delta.stat().st_size == encoded.size
    # Three changed clusters hold data; the zeroed two hold none.
    assert encoded.data_bytes == 2 * C + 512
    raw = tmp_path / 'parent.raw'
    raw.write_bytes(parent)
    base = tmp_path / 'parent.qcow2'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(base)], check=True)
    subprocess.run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-b',
                    str(base), '-F', 'qcow2', str(delta)], check=True)
    out = tmp_path / 'out.raw'
    subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                    str(delta), str(out)], check=True)
    assert out.read_bytes() == bytes(new)
    subprocess.run(['qemu-img', 'check', '-f', 'qcow2', str(delta)],
                   check=True, capture_output=True)
