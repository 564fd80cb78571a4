"""The content digest is of the whole disk, whatever the encoder reads."""

import hashlib
import os

from vmsnap_driver import digest
from vmsnap_driver import nbd

MIB = 1024 * 1024


def test_a_partial_reader_still_digests_the_whole_disk():
    disk = bytearray(os.urandom(10 * MIB))
    disk[2 * MIB:6 * MIB] = bytes(4 * MIB)
    extents = [nbd.Extent(0, 2 * MIB, False), nbd.Extent(2 * MIB, 4 * MIB,
                                                         True),
               nbd.Extent(6 * MIB, 4 * MIB, False)]
    reads = []

    def read(offset, length):
        reads.append((offset, length))
        return bytes(disk[offset:offset + length])
    content = digest.ContentDigest(read, len(disk), extents)
    # What a delta's encoder reads: one changed piece.
    assert content.read(7 * MIB, 4096) == disk[7 * MIB:7 * MIB + 4096]
    assert content.result().sha256 == hashlib.sha256(disk).hexdigest()
    # The zero run was never read.
    assert not any(o < 6 * MIB and o + n > 2 * MIB for o, n in reads)


def test_the_tree_digest_is_updated_from_the_changed_blocks_alone():
    size = 5 * MIB + 4096
    disk = bytearray(os.urandom(size))
    disk[MIB:3 * MIB] = bytes(2 * MIB)
    extents = [nbd.Extent(0, MIB, False), nbd.Extent(MIB, 2 * MIB, True),
               nbd.Extent(3 * MIB, size - 3 * MIB, False)]

    def reader(data):
        return lambda o, n: bytes(data[o:o + n])
    base = digest.ContentDigest(reader(disk), size, extents,
                                tree=True).result()
    assert base.sha256 == hashlib.sha256(disk).hexdigest()
    expected_blocks = b''.join(
        hashlib.sha256(disk[o:o + MIB]).digest() for o in range(0, size, MIB))
    assert base.blocks == expected_blocks
    assert base.tree == hashlib.sha256(expected_blocks).hexdigest()

    new = bytearray(disk)
    new[size - 100:] = os.urandom(100)              # the short last block
    new[MIB + 10:MIB + 20] = b'x' * 10              # into the zero run
    reads = []

    def read(offset, length):
        reads.append(offset // MIB)
        return bytes(new[offset:offset + length])
    changed = digest.blocks_of([nbd.Extent(size - 100, 100, False),
                                nbd.Extent(MIB, 65536, False)])
    assert changed == [1, 5]
    updated = digest.update_blocks(base.blocks, size, changed, [
        nbd.Extent(0, MIB, False), nbd.Extent(MIB, MIB, False),
        nbd.Extent(2 * MIB, MIB, True),
        nbd.Extent(3 * MIB, size - 3 * MIB, False)], read)
    assert sorted(reads) == [1, 5]
    whole = digest.ContentDigest(reader(new), size,
                                 [nbd.Extent(0, size, False)],
                                 tree=True).result()
    assert updated.tree == whole.tree
