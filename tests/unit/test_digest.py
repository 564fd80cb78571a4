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
    assert content.hexdigest() == hashlib.sha256(disk).hexdigest()
    # The zero run was never read.
    assert not any(o < 6 * MIB and o + n > 2 * MIB for o, n in reads)
