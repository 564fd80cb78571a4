"""Format-independent content digests of a virtual disk's bytes.

Two digests, both independent of how the disk is stored (raw, qcow2,
compressed, any cluster layout), so that a restore can be checked against
the snapshot it came from:

``vmsnap_content_sha256``
    sha256 of the disk's bytes, front to back: what ``qemu-img convert -O
    raw | sha256sum`` gives.
``vmsnap_content_tree_sha256``
    sha256 of the concatenated sha256 digests of each 1 MiB block of the
    disk (the last one may be shorter).  It proves the same thing, and it
    can be updated: a delta of a chain re-hashes only the blocks that
    changed, given its parent's block digests.  Reading a whole disk again
    for a plain sha256 would cost a delta as much as a full snapshot
    (measured here: 0.5-0.6 GB/s from an NBD export), which is what a
    delta exists to avoid.

Runs that read as zeros are not read.  The tree digest knows a zero
block's digest; the plain sha256 must still hash every zero byte (sha256
has no shortcut over a run of zeros: 1.3 GB/s on one core here, with
SHA-NI).  On a mostly empty disk, as cloud guests' root disks are, that
is more work than uploading the data: a 16 GiB disk holding 1 GiB took
21.1 s to snapshot, against 6.4 s for a bare upload of its image.  So a
full snapshot records the plain sha256 only where its zeros cost no more
than its data (see :func:`plain_pays`), and the tree digest otherwise;
``plain_content_digest = always`` records it on every image, whatever it
costs.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from oslo_log import log as logging

from vmsnap_driver import image_properties
from vmsnap_driver import nbd
from vmsnap_driver import qemu_nbd

LOG = logging.getLogger(__name__)

ALGORITHM = 'sha256'
ZEROS = bytes(4 * 1024 * 1024)
BLOCK = 1024 * 1024
DIGEST_SIZE = 32
ZERO_BLOCK = hashlib.sha256(bytes(BLOCK)).digest()

SHA256_PROPERTY = image_properties.DIGEST_PROPERTY
TREE_PROPERTY = image_properties.TREE_DIGEST_PROPERTY
# What a snapshot's image records: one or both.
RECORDED = '%s or %s' % (SHA256_PROPERTY, TREE_PROPERTY)

Reads = nbd.Reads
# Pieces read but not yet hashed, at most (4 MiB each from an export).
HASH_BEHIND = 4
# Zeros the plain sha256 hashes whatever the data (under a second here).
PLAIN_FREE_ZEROS = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Digests:
    """What was computed: either digest may be None if not asked for."""

    sha256: Optional[str]
    tree: Optional[str]
    # The block digests behind ``tree``, for the next delta.
    blocks: Optional[bytes]

    def properties(self) -> dict:
        return {name: value for name, value in
                ((SHA256_PROPERTY, self.sha256), (TREE_PROPERTY, self.tree))
                if value}


def tree_of(blocks: bytes) -> str:
    return hashlib.sha256(blocks).hexdigest()


def block_count(size: int) -> int:
    return -(-size // BLOCK)


class ContentDigest:
    """Digests of a disk's content, fed by ascending, non-overlapping reads.

    Wraps a reader: whatever the encoder reads is hashed as it passes.
    What it skips is hashed too: as zeros, or, given the disk's
    ``extents``, read wherever they say there is data.

    The hashing runs on a thread of its own, a few pieces behind the
    reads (hashlib releases the GIL): the next read waits for the disk
    while the last piece is hashed, instead of after it.

    :param plain: compute the front-to-back sha256.
    :param tree: compute the block digests and their tree digest.
    """

    def __init__(self, reads: Reads, size: int,
                 extents: Optional[List[nbd.Extent]] = None,
                 plain: bool = True, tree: bool = False) -> None:
        self._reads = reads
        self._size = size
        self._hash = hashlib.new(ALGORITHM) if plain else None
        self._blocks = bytearray() if tree else None
        self._block = hashlib.sha256()
        self._block_fill = 0
        self._position = 0
        self._data = collections.deque(e for e in extents or ()
                                       if not e.zero)
        self._data_end = max((e.offset + e.length for e in self._data),
                             default=0)
        # Set by close(): a zero run being hashed stops.
        self._closing = False
        self._hasher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix='digest')
        self._pending: collections.deque = collections.deque()

    def _behind(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the hashing thread, in order, a few pieces behind."""
        self._pending.append(self._hasher.submit(fn, *args))
        while len(self._pending) > HASH_BEHIND:
            self._pending.popleft().result()

    def _feed(self, data: bytes) -> None:
        self._behind(self._hash_data, data)

    def _zeros(self, length: int) -> None:
        if length:
            self._behind(self._hash_zero_run, length)

    def _hash_data(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        if self._blocks is None:
            return
        view = memoryview(data)
        while view:
            n = min(len(view), BLOCK - self._block_fill)
            self._block.update(view[:n])
            self._block_fill += n
            view = view[n:]
            if self._block_fill == BLOCK:
                self._end_block()

    def _end_block(self) -> None:
        self._blocks += self._block.digest()
        self._block = hashlib.sha256()
        self._block_fill = 0

    def _hash_zero_run(self, length: int) -> None:
        while length > 0 and not self._closing:
            if (self._blocks is not None and not self._block_fill
                    and length >= BLOCK):
                # Whole zero blocks: their digest is known; the plain
                # sha256 hashes them a piece at a time.
                count = length // BLOCK
                if self._hash is not None:
                    count = min(count, len(ZEROS) // BLOCK)
                    self._hash.update(memoryview(ZEROS)[:count * BLOCK])
                self._blocks += ZERO_BLOCK * count
                length -= count * BLOCK
                continue
            n = min(length, len(ZEROS))
            if self._blocks is not None:
                n = min(n, BLOCK - self._block_fill)
            self._hash_data(memoryview(ZEROS)[:n])
            length -= n

    def _data_before(self, offset: int) -> List[Tuple[int, int]]:
        """The data runs between the position and ``offset``, in pieces."""
        pieces = []
        position = self._position
        while self._data and self._data[0].offset < offset:
            extent = self._data[0]
            end = extent.offset + extent.length
            start = max(extent.offset, position)
            stop = min(end, offset)
            while start < stop:
                n = min(stop - start, len(ZEROS))
                pieces.append((start, n))
                start += n
            if end > offset:
                break
            self._data.popleft()
            position = max(position, end)
        return pieces

    def _skip_to(self, offset: int, reading: bool = True) -> None:
        """Hash the disk up to ``offset``: its data read, the rest zeros.

        :param reading: whether data may be read here (not while the
            encoder's own reads are in flight on the connection).
        """
        pieces = self._data_before(offset)
        if pieces and not reading:
            raise ValueError('the reads skip data at %d that the digest '
                             'needs' % pieces[0][0])
        for (start, n), data in zip(pieces, self._reads(pieces)):
            self._zeros(start - self._position)
            self._feed(data)
            self._position = start + n
        self._zeros(offset - self._position)
        self._position = offset

    def reads(self, plan: Iterable[Tuple[int, int]]) -> Iterator[bytes]:
        """The bytes of each (offset, length) of ``plan``, hashed.

        The plan must be ascending and cover every data run of the disk.
        """
        ahead, here = itertools.tee(plan)
        for (offset, _length), data in zip(here, self._reads(ahead)):
            if offset < self._position:
                raise ValueError('reads must be ascending for the digest')
            self._skip_to(offset, reading=False)
            self._feed(data)
            self._position = offset + len(data)
            if self._position >= self._data_end:
                # No data left: the zeros to the end are hashed while the
                # upload drains, not once it is done.
                self._skip_to(self._size, reading=False)
            yield data

    def close(self) -> None:
        """End the hashing thread; what is still queued is dropped."""
        self._closing = True
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def result(self) -> Digests:
        """The digests, once everything was read."""
        try:
            self._skip_to(self._size)
            while self._pending:
                self._pending.popleft().result()
        finally:
            self.close()
        if self._blocks is not None and self._block_fill:
            self._end_block()
        blocks = bytes(self._blocks) if self._blocks is not None else None
        return Digests(
            sha256=self._hash.hexdigest() if self._hash else None,
            tree=tree_of(blocks) if blocks is not None else None,
            blocks=blocks)


def plain_pays(size: int, extents: Iterable[nbd.Extent]) -> bool:
    """Whether a full snapshot's plain sha256 is worth its zeros.

    It is when the disk's zero runs are no larger than its data (hashing
    them then costs at most about a tenth of uploading the data: Glance
    took 0.15 GB/s here, sha256 1.3 GB/s), or total under
    :data:`PLAIN_FREE_ZEROS` (under a second).
    """
    data = sum(e.length for e in extents if not e.zero)
    return size - data <= max(data, PLAIN_FREE_ZEROS)


def for_snapshot(reads: Reads, size: int, extents: List[nbd.Extent],
                 tree: bool, always_plain: bool = False) -> ContentDigest:
    """The digests a full image of the disk records (see the module doc).

    :param tree: the tree digest too: a chain's images carry it (and the
        block digests behind it are kept for the next delta).
    :param always_plain: the plain sha256 whatever it costs
        (``plain_content_digest = always``, or the one to prove).
    """
    plain = always_plain or plain_pays(size, extents)
    if not plain:
        LOG.info('The disk is mostly empty (%(size)d MiB, %(data)d MiB of '
                 'data): its image records %(tree)s, not %(plain)s, '
                 'which would hash every zero byte',
                 {'size': size >> 20, 'tree': TREE_PROPERTY,
                  'plain': SHA256_PROPERTY,
                  'data': sum(e.length for e in extents if not e.zero)
                  >> 20})
    return ContentDigest(reads, size, extents, plain=plain,
                         tree=tree or not plain)


def blocks_of(extents: Iterable[nbd.Extent]) -> List[int]:
    """The indexes of the blocks ``extents`` touch, in order."""
    indexes = set()
    for extent in extents:
        if extent.length:
            indexes.update(range(extent.offset // BLOCK,
                                 (extent.offset + extent.length - 1)
                                 // BLOCK + 1))
    return sorted(indexes)


def update_blocks(base: bytes, size: int, changed: Iterable[int],
                  extents: List[nbd.Extent], reads: Reads) -> Digests:
    """A delta's block digests: ``base`` with the ``changed`` blocks redone.

    Only the changed blocks are read (a block wholly in a zero run is not
    read at all).
    """
    blocks = bytearray(base)
    zero_runs = [(e.offset, e.offset + e.length) for e in extents if e.zero]
    run = 0
    to_read = []
    for index in changed:
        start = index * BLOCK
        end = min(start + BLOCK, size)
        while run < len(zero_runs) and zero_runs[run][1] <= start:
            run += 1
        if (run < len(zero_runs) and zero_runs[run][0] <= start
                and zero_runs[run][1] >= end):
            blocks[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] = (
                hashlib.sha256(ZEROS[:end - start]).digest())
        else:
            to_read.append((index, (start, end - start)))
    for (index, _piece), data in zip(to_read, reads(
            piece for _index, piece in to_read)):
        blocks[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] = (
            hashlib.sha256(data).digest())
    blocks = bytes(blocks)
    return Digests(sha256=None, tree=tree_of(blocks), blocks=blocks)


def recorded(image: dict) -> Tuple[Optional[str], bool]:
    """The digest a snapshot recorded, and whether it is the tree one.

    The plain sha256 when the image has it, else the tree digest (a
    delta has only that).
    """
    if image.get(SHA256_PROPERTY):
        return image[SHA256_PROPERTY], False
    return image.get(TREE_PROPERTY), True


def of_delta(reads: Reads, size: int, extents: List[nbd.Extent],
             changed: List[nbd.Extent],
             base: Optional[bytes], plain: bool = False) -> Digests:
    """A delta's digests, from the blocks that ``changed``.

    ``base`` is its parent's block digests; without them, or when the
    ``plain`` sha256 is asked for, the whole disk is read, and both
    digests are recorded.
    """
    if base is None:
        LOG.warning('The parent\'s block digests are not on this host: the '
                    'whole disk is read for the delta\'s digests')
    if base is None or plain:
        return for_snapshot(reads, size, extents, True, plain).result()
    return update_blocks(base, size, blocks_of(changed), extents, reads)


def of_export(client: nbd.Client, plain: bool = True,
              tree: bool = False) -> Digests:
    """The digests of a whole NBD export, reading only its data runs."""
    return ContentDigest(client.read_ahead, client.size, client.extents(),
                         plain=plain, tree=tree).result()


@contextlib.contextmanager
def _served(path: str, image_format: str, untrusted: bool,
            extent: Optional[Tuple[int, int]] = None
            ) -> Iterator[nbd.Client]:
    with qemu_nbd.serve(path, image_format, untrusted, extent) as sock:
        with nbd.Client(sock, qemu_nbd.EXPORT) as client:
            yield client


def _of_file(path: str, image_format: str, untrusted: bool, plain: bool,
             tree: bool, extent: Optional[Tuple[int, int]] = None
             ) -> Digests:
    with _served(path, image_format, untrusted, extent) as client:
        return of_export(client, plain, tree)


def of_snapshot_file(path: str, image_format: str,
                     always_plain: bool = False) -> Digests:
    """The digests a full snapshot records, of the image file it uploads."""
    with _served(path, image_format, False) as client:
        return for_snapshot(client.read_ahead, client.size,
                            client.extents(), False, always_plain).result()


def of_file(path: str, image_format: str, untrusted: bool = False,
            tree: bool = False,
            extent: Optional[Tuple[int, int]] = None) -> str:
    """A digest of an image file's virtual disk (its backing included).

    :param untrusted: the file came from Glance (and passed
        image_safety): read it under resource limits.
    :param tree: the tree digest instead of the plain sha256.
    :param extent: (offset, length) of the image inside ``path``.
    """
    found = _of_file(path, image_format, untrusted, not tree, tree, extent)
    return found.tree if tree else found.sha256


def of_point_file(path: str, image_format: str, untrusted: bool = False,
                  plain: bool = False) -> Digests:
    """What a full image of a chain's point records, in one read.

    The tree digest, and the plain sha256 when it pays or when ``plain``
    asks for it (it is the one to prove).
    """
    with _served(path, image_format, untrusted) as client:
        return for_snapshot(client.read_ahead, client.size,
                            client.extents(), True, plain).result()
