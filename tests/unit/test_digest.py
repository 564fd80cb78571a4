"""The content digest is of the whole disk, whatever the encoder reads."""

import hashlib
import os

import pytest

from tests.unit import planned
from vmsnap_driver import digest
from vmsnap_driver import nbd

MIB = 1024 * 1024


def _disk():
    disk = bytearray(os.urandom(10 * MIB))
    disk[2 * MIB:6 * MIB] = bytes(4 * MIB)
    extents = [nbd.Extent(0, 2 * MIB, False), nbd.Extent(2 * MIB, 4 * MIB,
                                                         True),
               nbd.Extent(6 * MIB, 4 * MIB, False)]
    reads = []

    def read(offset, length):
        reads.append((offset, length))
        return bytes(disk[offset:offset + length])
    return disk, extents, reads, read


def test_the_digest_is_of_the_whole_disk_whoever_reads_it():
    disk, extents, reads, read = _disk()
    # An encoder's reads: the data, in pieces, zeros skipped.
    content = digest.ContentDigest(planned(read), len(disk), extents)
    plan = [(0, 2 * MIB), (6 * MIB, 3 * MIB), (9 * MIB, MIB)]
    assert b''.join(content.reads(plan)) == disk[:2 * MIB] + disk[6 * MIB:]
    assert content.result().sha256 == hashlib.sha256(disk).hexdigest()
    # A read may span several runs, zeros included (a qcow2 cluster).
    content = digest.ContentDigest(planned(read), len(disk), [
        nbd.Extent(0, MIB, False), nbd.Extent(MIB, MIB, True),
        nbd.Extent(2 * MIB, 4 * MIB, True), nbd.Extent(6 * MIB, MIB, False),
        nbd.Extent(7 * MIB, MIB, False), nbd.Extent(8 * MIB, 2 * MIB, False)])
    plan = [(0, 2 * MIB), (6 * MIB, 4 * MIB)]
    assert b''.join(content.reads(plan)) == disk[:2 * MIB] + disk[6 * MIB:]
    assert content.result().sha256 == hashlib.sha256(disk).hexdigest()
    # Or nobody's: the digest reads the data itself.
    reads.clear()
    content = digest.ContentDigest(planned(read), len(disk), extents)
    assert content.result().sha256 == hashlib.sha256(disk).hexdigest()
    # The zero run was never read.
    assert reads and not any(o < 6 * MIB and o + n > 2 * MIB
                             for o, n in reads)


def test_reads_that_skip_data_are_refused():
    """The digest cannot read it while the reads are in flight."""
    disk, extents, _reads, read = _disk()
    content = digest.ContentDigest(planned(read), len(disk), extents)
    with pytest.raises(ValueError, match='skip data'):
        list(content.reads([(7 * MIB, 4096)]))


def test_the_tree_digest_is_updated_from_the_changed_blocks_alone():
    size = 5 * MIB + 4096
    disk = bytearray(os.urandom(size))
    disk[MIB:3 * MIB] = bytes(2 * MIB)
    extents = [nbd.Extent(0, MIB, False), nbd.Extent(MIB, 2 * MIB, True),
               nbd.Extent(3 * MIB, size - 3 * MIB, False)]

    def reader(data):
        return planned(lambda o, n: bytes(data[o:o + n]))
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
        nbd.Extent(3 * MIB, size - 3 * MIB, False)], planned(read))
    assert sorted(reads) == [1, 5]
    whole = digest.ContentDigest(reader(new), size,
                                 [nbd.Extent(0, size, False)],
                                 tree=True).result()
    assert updated.tree == whole.tree
    # plain_content_digest = always: the delta reads the whole disk for it.
    reads.clear()
    both = digest.of_delta(planned(read), size, [
        nbd.Extent(0, MIB, False), nbd.Extent(MIB, MIB, False),
        nbd.Extent(2 * MIB, MIB, True),
        nbd.Extent(3 * MIB, size - 3 * MIB, False)],
        [nbd.Extent(size - 100, 100, False)], base.blocks, plain=True)
    assert both.sha256 == hashlib.sha256(new).hexdigest()
    assert both.tree == whole.tree


def test_a_mostly_empty_disk_records_the_tree_digest_not_the_plain_one():
    """Hashing every zero byte of it would cost more than its upload."""
    data = 8 * MIB
    free = digest.PLAIN_FREE_ZEROS

    def extents(zeros):
        return [nbd.Extent(0, data, False), nbd.Extent(data, zeros, True)]
    for zeros, plain in ((free, True), (free + MIB, False),
                         (2 * free, False)):
        assert digest.plain_pays(data + zeros, extents(zeros)) is plain
    # With as much data as zeros, the plain sha256 pays at any size.
    assert digest.plain_pays(2 * (free + MIB), [
        nbd.Extent(0, free + MIB, False),
        nbd.Extent(free + MIB, free + MIB, True)])

    disk = bytearray(os.urandom(data))
    size = data + free + MIB

    def read(offset, length):
        if offset + length > data:
            raise AssertionError('the zero run was read')
        return bytes(disk[offset:offset + length])
    found = digest.for_snapshot(planned(read), size,
                                extents(free + MIB), tree=False).result()
    assert found.sha256 is None
    blocks = b''.join(hashlib.sha256(disk[o:o + MIB]).digest()
                      for o in range(0, data, MIB)) + (
        digest.ZERO_BLOCK * ((free + MIB) // MIB))
    assert found.tree == hashlib.sha256(blocks).hexdigest()
    assert found.properties() == {digest.TREE_PROPERTY: found.tree}
    # A disk that pays gets the plain one, and the tree only when chained.
    small = digest.for_snapshot(planned(read), data, extents(0)[:1],
                                tree=False).result()
    assert small.sha256 == hashlib.sha256(disk).hexdigest()
    assert small.tree is None
    # Or every disk, when the operator asks for it whatever it costs.
    forced = digest.for_snapshot(planned(lambda o, n: bytes(n) if o >= data
                                         else bytes(disk[o:o + n])),
                                 size, extents(free + MIB), tree=False,
                                 always_plain=True).result()
    assert forced.sha256 == hashlib.sha256(
        bytes(disk) + bytes(free + MIB)).hexdigest()


def test_the_zeros_after_the_last_data_are_hashed_as_it_passes():
    """Not after the upload: a raw encoder never asks for more pieces."""
    disk = bytearray(os.urandom(4 * MIB)) + bytes(6 * MIB)
    extents = [nbd.Extent(0, 4 * MIB, False),
               nbd.Extent(4 * MIB, 6 * MIB, True)]
    reads = []

    def read(offset, length):
        reads.append(offset)
        return bytes(disk[offset:offset + length])
    content = digest.ContentDigest(planned(read), len(disk), extents,
                                   tree=True)
    pieces = content.reads(iter([(0, 2 * MIB), (2 * MIB, 2 * MIB)]))
    next(pieces)
    next(pieces)                    # never asked for the end of the plan
    assert content._position == len(disk)
    reads.clear()
    found = content.result()
    assert not reads
    assert found.sha256 == hashlib.sha256(disk).hexdigest()
    assert found.tree == hashlib.sha256(b''.join(
        hashlib.sha256(disk[o:o + MIB]).digest()
        for o in range(0, len(disk), MIB))).hexdigest()
