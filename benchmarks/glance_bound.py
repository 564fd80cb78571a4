#!/usr/bin/env python3
"""The least time the local Glance can take to ingest one image of a size.

Glance ingests an upload in one thread, piece by piece: receive, md5 (the
legacy ``checksum``), ``hashing_algorithm`` (``os_hash_value``), write into
the store's file.  No client can make an upload faster than the sum of that
per-byte work, measured here on its own, one part at a time, each from the
same settled memory state as snapshot_bench.py's runs:

  write    a file of that size in Glance's store directory, 4 MiB pieces
           (Glance's filesystem_store_chunk_size here), page cache only
  md5      over that many bytes
  hash     the configured hashing_algorithm over that many bytes
  put      one real PUT of that many random bytes into Glance (curl, with
           a Content-Length), from a file already in the page cache

Receiving is left out, so write + md5 + hash is a lower bound.  Compared
with Nova's live time from a snapshot_bench.py run (--results), it says
whether a goal such as "at most 0.6 x Nova" is reachable on this host by any
client of this Glance.

Run as root with the local Glance up (tools/setup-host), e.g.
    python benchmarks/glance_bound.py --size 4G
"""

import argparse
import hashlib
import json
import os
import sys
import time

import snapshot_bench as bench

MIB = bench.MIB
PIECE = 4 * MIB


def timed_write(path: str, size: int, piece: bytes) -> float:
    started = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(size // len(piece)):
            os.write(fd, piece)
        return time.monotonic() - started
    finally:
        os.close(fd)
        os.unlink(path)


def timed_hash(algorithm: str, size: int, piece: bytes) -> float:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    started = time.monotonic()
    for _ in range(size // len(piece)):
        digest.update(piece)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=bench.parse_size,
                        default=bench.parse_size('4G'),
                        help='bytes per image (a multiple of 4 MiB)')
    parser.add_argument('--glance', default=bench.GLANCE_URL)
    parser.add_argument('--hashing-algorithm', default=os.environ.get(
        'VMSNAP_GLANCE_HASHING_ALGORITHM', 'sha256'),
        help="the local Glance's hashing_algorithm")
    parser.add_argument('--settle', type=float, default=bench.SETTLE_S,
                        help='seconds to wait after dropping the page cache')
    parser.add_argument('--results', default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'results.json'),
        help="a snapshot_bench.py result, for Nova's live time")
    args = parser.parse_args()
    if args.size % PIECE:
        sys.exit('--size must be a multiple of 4 MiB')

    piece = os.urandom(PIECE)
    scratch = os.path.join(bench.GLANCE_STORE, '.bench-bound')
    bench.settle(args.settle)
    write_s = timed_write(scratch, args.size, piece)
    md5_s = timed_hash('md5', args.size, piece)
    hash_s = timed_hash(args.hashing_algorithm, args.size, piece)
    bench.random_file(scratch, args.size)
    bench.settle(args.settle)
    try:
        put_s = bench.timed_upload(args.glance, scratch)
    finally:
        os.unlink(scratch)
    bound = write_s + md5_s + hash_s
    figures = {'size': args.size, 'write_s': write_s, 'md5_s': md5_s,
               'hash_s': hash_s, 'bound_s': bound, 'put_s': put_s}

    print('%s into Glance, one thread:' % bench.human(args.size))
    print('  write into the page cache  %5.1f s' % write_s)
    print('  md5                        %5.1f s' % md5_s)
    print('  %-26s %5.1f s' % (args.hashing_algorithm, hash_s))
    print('  lower bound (sum)          %5.1f s' % bound)
    print('  a real PUT                 %5.1f s' % put_s)
    try:
        with open(args.results) as f:
            rows = json.load(f)['rows']
        nova = [r for r in rows if r['method'] == 'nova-live' and
                r['data_bytes'] == args.size]
    except (OSError, ValueError, KeyError):
        nova = []
    if nova:
        wall = nova[0]['wall_s']
        figures['nova_live_s'] = wall
        print("Nova's live snapshot in %s: %.1f s; 0.6 x that is %.1f s, "
              "%.0f %% of the lower bound, %.0f %% of a real PUT"
              % (os.path.basename(args.results), wall, 0.6 * wall,
                 100 * 0.6 * wall / bound, 100 * 0.6 * wall / put_s))
    print(json.dumps(figures))


if __name__ == '__main__':
    main()
