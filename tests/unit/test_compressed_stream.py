"""The streamed compressed qcow2, read back by the real qemu-img."""

import json
import os
import subprocess

import pytest

from tests.unit import planned
from vmsnap_driver import cluster_codec
from vmsnap_driver import image_stream
from vmsnap_driver import nbd

C = image_stream.CLUSTER
MIB = 1024 * 1024


def text(length, seed=0):
    """Compressible bytes that still differ from cluster to cluster."""
    line = b'%08d the quick brown fox jumps over the lazy dog\n'
    out = bytearray()
    n = seed
    while len(out) < length:
        out += line % n
        n += 1
    return bytes(out[:length])


def qemu_img(*args):
    return subprocess.run(['qemu-img'] + list(args), check=True,
                          capture_output=True, text=True).stdout


def write(tmp_path, name, encoded):
    path = tmp_path / name
    with open(path, 'wb') as f:
        for chunk in encoded.chunks:
            f.write(chunk)
    assert path.stat().st_size == encoded.size
    return path


def as_raw(tmp_path, image):
    out = tmp_path / (image.name + '.raw')
    qemu_img('convert', '-f', 'qcow2', '-O', 'raw', str(image), str(out))
    return out.read_bytes()


def mixed_disk():
    """Text, random and zeroed clusters, two L2 tables, a short tail."""
    size = 600 * MIB + 1536
    disk = {0: text(20 * C), 20 * C: os.urandom(3 * C),
            23 * C: bytes(4 * C), 27 * C + 512: text(C - 512, 7),
            520 * MIB: text(2 * C + 100, 3), size - 1024: text(1024, 9)}
    return size, disk


def reader(size, disk):
    def read(offset, length):
        out = bytearray(length)
        for start, data in disk.items():
            lo = max(start, offset)
            hi = min(start + len(data), offset + length)
            if lo < hi:
                out[lo - offset:hi - offset] = data[lo - start:hi - start]
        return bytes(out)
    extents = [nbd.Extent(start, -(-len(data) // 512) * 512, False)
               for start, data in sorted(disk.items())]
    return read, extents


@pytest.mark.parametrize('kind', ['zlib', 'zstd'])
def test_compressed_qcow2_is_what_qemu_reads(tmp_path, kind):
    size, disk = mixed_disk()
    read, extents = reader(size, disk)
    reads = []

    def first_pass(offset, length):
        reads.append(offset)
        return read(offset, length)
    encoded = image_stream.qcow2(size, extents, planned(first_pass),
                                 cluster_codec.Codec(kind, C), planned(read))
    image = write(tmp_path, 'c.qcow2', encoded)
    # The first pass reads the disk once, in order (a digest watches it).
    assert reads == sorted(reads) and len(reads) == len(set(reads))
    qemu_img('check', '-f', 'qcow2', str(image))
    info = json.loads(qemu_img('info', '--output=json', str(image)))
    assert info['format-specific']['data']['compression-type'] == kind
    # Compared as sparse files: the disk is 600 MiB.
    expected = tmp_path / 'expected.raw'
    with open(expected, 'wb') as f:
        f.truncate(size)
        for start, data in disk.items():
            f.seek(start)
            f.write(data)
    qemu_img('compare', '-f', 'raw', '-F', 'qcow2', str(expected),
             str(image))
    # Text packs; the random and zeroed clusters take no more than
    # themselves and nothing.
    plain = image_stream.qcow2(size, extents, planned(read))
    assert encoded.size < plain.size - 12 * C


def test_incompressible_data_is_stored_after_a_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_codec, 'SAMPLE_PIECES', 2)
    size = 3 * image_stream.PIECE
    data = os.urandom(size)
    calls = []

    def read(offset, length):
        calls.append(length)
        return data[offset:offset + length]
    extents = [nbd.Extent(0, size, False)]
    encoded = image_stream.qcow2(size, extents, planned(read),
                                 cluster_codec.Codec('zstd', C),
                                 planned(read))
    image = write(tmp_path, 'r.qcow2', encoded)
    # Two sample pieces, then the data once.
    assert sum(calls) == 2 * image_stream.PIECE + size
    info = json.loads(qemu_img('info', '--output=json', str(image)))
    assert info['format-specific']['data']['compression-type'] == 'zlib'
    assert encoded.size == image_stream.qcow2(size, extents,
                                              planned(read)).size
    assert as_raw(tmp_path, image) == data


def test_compressed_delta_on_its_parent_reads_as_the_new_disk(tmp_path):
    size = 40 * C
    parent = bytearray(text(size))
    new = bytearray(parent)
    new[C:2 * C] = text(C, 99)                      # rewritten
    new[3 * C:5 * C] = bytes(2 * C)                 # discarded
    new[10 * C:11 * C] = os.urandom(C)              # incompressible
    changed = [nbd.Extent(C, C, False), nbd.Extent(3 * C, 2 * C, False),
               nbd.Extent(10 * C, C, False)]
    extents = [nbd.Extent(0, 3 * C, False), nbd.Extent(3 * C, 2 * C, True),
               nbd.Extent(5 * C, size - 5 * C, False)]
    encoded = image_stream.qcow2_delta(
        size, extents, changed, planned(lambda o, n: bytes(new[o:o + n])),
        cluster_codec.Codec('zstd', C))
    delta = write(tmp_path, 'delta.qcow2', encoded)
    raw = tmp_path / 'parent.raw'
    raw.write_bytes(parent)
    base = tmp_path / 'parent.qcow2'
    qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw), str(base))
    qemu_img('rebase', '-u', '-f', 'qcow2', '-b', str(base), '-F', 'qcow2',
             str(delta))
    qemu_img('check', '-f', 'qcow2', str(delta))
    assert as_raw(tmp_path, delta) == bytes(new)
    # A restore commits it into its downloaded parent, compressed too.
    packed = tmp_path / 'packed.qcow2'
    qemu_img('convert', '-c', '-o', 'compression_type=zstd', '-f', 'raw',
             '-O', 'qcow2', str(raw), str(packed))
    qemu_img('rebase', '-u', '-f', 'qcow2', '-b', str(packed), '-F',
             'qcow2', str(delta))
    qemu_img('commit', '-f', 'qcow2', str(delta))
    qemu_img('check', '-f', 'qcow2', str(packed))
    assert as_raw(tmp_path, packed) == bytes(new)


def test_a_disk_that_changes_between_the_passes_fails_the_stream():
    data = bytearray(text(8 * C))
    extents = [nbd.Extent(0, 8 * C, False)]
    read = planned(lambda o, n: bytes(data[o:o + n]))
    encoded = image_stream.qcow2(8 * C, extents, read,
                                 cluster_codec.Codec('zlib', C), read)
    data[3 * C:4 * C] = os.urandom(C)
    with pytest.raises(image_stream.StreamError, match='changed'):
        b''.join(encoded.chunks)
