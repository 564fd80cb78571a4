#!/usr/bin/env python3
"""Incremental snapshots against full ones, and restoring a chain.

One real TCG guest runs on a qcow2 disk holding --data of random data (half
in a backing file, half in the overlay, as the snapshot benchmark lays it
out).  Through vmsnap's driver, into the local Glance:

  1. an incremental snapshot that starts a chain (full);
  2. for each changed fraction (of the data): the guest rewrites that much
     of its disk (1 MiB pieces spread over the data, copied from 64 MiB
     away, so every byte changes), then an incremental snapshot (a delta)
     and, right after it, a full snapshot of the same disk: their wall
     times and uploaded sizes, side by side;
  3. a new chain of 7 images, 1 % changed before each delta, then a full
     snapshot of that same point; then restoring the point from the chain
     into one file (download every image, write each delta into the
     file: ``chains.assemble``) against downloading the full image.

The chain is proven: restored, it has the top delta's
``vmsnap_content_tree_sha256`` and the ``vmsnap_content_sha256`` of the full
snapshot of the same instant.  It
prints a table, writes benchmarks/results-chains.json and draws
benchmarks/results-chains.png.  Run as root on a host prepared by
tools/setup-host: ``tox -e bench-chains -- --data 4G``.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
import types

import glanceclient
import libvirt

from tests.functional import testguest
from vmsnap_driver import chains
from vmsnap_driver import config
from vmsnap_driver import digest
from vmsnap_driver import driver as driver_mod
from vmsnap_driver import glance as glance_mod

import memory_bench
import snapshot_bench

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = snapshot_bench.MIB
PIECE = MIB
# Pieces are copied from this far away: another of build_disk's patterns.
SHIFT = 64 * MIB


def change(guest, disk: dict, data: int, fraction: float) -> int:
    """The guest rewrites ``fraction`` of its data; the bytes changed."""
    virtual = disk['virtual']
    regions = [(0, data // 2), (virtual // 2, data - data // 2)]
    pieces = max(1, round(data * fraction / PIECE))
    per_region = [pieces // 2, pieces - pieces // 2]
    commands = []
    for (start, length), count in zip(regions, per_region):
        if not count:
            continue
        step = length // count // PIECE * PIECE
        for n in range(count):
            dest = start + n * step
            source = dest + SHIFT if dest + SHIFT + PIECE <= start + length \
                else dest - SHIFT
            commands.append('%d %d' % (dest // PIECE, source // PIECE))
    script = ('while read d s; do dd if=/dev/vda of=/dev/vda bs=%d '
              'skip=$s seek=$d count=1 conv=notrunc 2>/dev/null || exit 1; '
              'done <<EOF\n%s\nEOF\nsync' % (PIECE, '\n'.join(commands)))
    code, out = guest.run(script, timeout=3600)
    assert code == 0, out
    return len(commands) * PIECE


def snapshot(driver, glance, instance, name: str, incremental: bool,
             created: list) -> tuple:
    image = glance.images.create(
        name=name, vmsnap_incremental='true' if incremental else 'false')
    created.append(image['id'])
    started = time.monotonic()
    driver.snapshot(None, instance, image['id'])
    seconds = time.monotonic() - started
    image = glance.images.get(image['id'])
    snapshot_bench.log('%s: %.1f s, %s (%s)' % (
        name, seconds, snapshot_bench.human(image['size']),
        image['vmsnap_mode_reason'][:60]))
    return image, seconds


def restore_chain(images, image: dict, full: dict, workdir: str) -> float:
    """Download the chain and write each delta into its parent."""
    started = time.monotonic()
    point = chains.assemble(images, chains.lineage(images, image), workdir)
    seconds = time.monotonic() - started
    found = digest.of_point_file(point, 'qcow2', plain=True)
    assert found.tree == image['vmsnap_content_tree_sha256']
    assert found.sha256 == full['vmsnap_content_sha256']
    shutil.rmtree(workdir)
    os.mkdir(workdir)
    return seconds


def download_full(images, image: dict, workdir: str) -> float:
    """Seconds to download the full image of the same point."""
    path = os.path.join(workdir, 'full.qcow2')
    started = time.monotonic()
    glance_mod.download(images, image, path)
    seconds = time.monotonic() - started
    shutil.rmtree(workdir)
    os.mkdir(workdir)
    return seconds


def run(args: argparse.Namespace, workroot: str) -> dict:
    conn = libvirt.open('qemu:///system')
    glance = glanceclient.Client('2', endpoint=snapshot_bench.GLANCE_URL)
    images = glance_mod.ImageService(config.CONF)
    workdir = tempfile.mkdtemp(dir=workroot, prefix='guest-')
    os.chmod(workdir, 0o755)
    disk = snapshot_bench.build_disk(workdir, args.data)
    guest = testguest.TestGuest(conn, workdir, disk=disk, agent=True)
    created = []
    scratch = tempfile.mkdtemp(dir=workroot, prefix='restore-')
    try:
        guest.start(timeout=900)
        driver = driver_mod.LibvirtDriver()
        instance = types.SimpleNamespace(uuid=guest.uuid, name=guest.name)
        start, start_s = snapshot(driver, glance, instance, 'chain start',
                                  True, created)
        rows = []
        for fraction in args.fractions:
            changed = change(guest, disk, args.data, fraction)
            delta, delta_s = snapshot(driver, glance, instance,
                                      'delta %g' % fraction, True, created)
            full, full_s = snapshot(driver, glance, instance,
                                    'full %g' % fraction, False, created)
            assert delta['vmsnap_delta'] == 'true'
            glance.images.delete(full['id'])
            created.remove(full['id'])
            rows.append({'fraction': fraction, 'changed': changed,
                         'delta_bytes': delta['size'], 'delta_s': delta_s,
                         'full_bytes': full['size'], 'full_s': full_s})
        # The chain to restore: a new one, full then 1 % changes each time
        # (the ones above end once the chain is full).
        top = delta
        while 'new chain' not in top['vmsnap_mode_reason']:
            change(guest, disk, args.data, 0.01)
            top, _s = snapshot(driver, glance, instance, 'chain', True,
                               created)
        while int(top['vmsnap_chain_depth']) < args.depth - 1:
            change(guest, disk, args.data, 0.01)
            top, _s = snapshot(driver, glance, instance, 'chain', True,
                               created)
        full, _s = snapshot(driver, glance, instance, 'full of the top',
                            False, created)
        chain_bytes = sum(i['size']
                          for i in chains.lineage(images, images.get(
                              top['id'])))
        snapshot_bench.settle(args.settle)
        restore_s = restore_chain(images, images.get(top['id']), full,
                                  scratch)
        snapshot_bench.settle(args.settle)
        download_s = download_full(images, full, scratch)
        snapshot_bench.log('restore of a chain of %d: %.1f s; full download '
                           '%.1f s' % (args.depth, restore_s, download_s))
        return {
            'data': args.data, 'virtual': disk['virtual'],
            'chain_start_s': start_s, 'chain_start_bytes': start['size'],
            'rows': rows,
            'restore': {'depth': args.depth, 'chain_bytes': chain_bytes,
                        'full_bytes': full['size'], 'restore_s': restore_s,
                        'download_s': download_s},
            'when': time.strftime('%Y-%m-%d'),
        }
    finally:
        for image_id in reversed(created):
            try:
                glance.images.update(image_id, protected=False)
                glance.images.delete(image_id)
            except Exception:
                pass
        guest.destroy()


def print_table(result: dict) -> None:
    human = snapshot_bench.human
    print('disk: %s of data (virtual %s)' % (human(result['data']),
                                             human(result['virtual'])))
    print('%-9s %10s %12s %12s %7s %9s %9s %7s' % (
        'changed', 'bytes', 'delta size', 'full size', 'ratio', 'delta',
        'full', 'ratio'))
    for r in result['rows']:
        print('%-9s %10s %12s %12s %6.2fx %8.1fs %8.1fs %6.3fx' % (
            '%g %%' % (r['fraction'] * 100), human(r['changed']),
            human(r['delta_bytes']), human(r['full_bytes']),
            r['delta_bytes'] / r['changed'], r['delta_s'], r['full_s'],
            r['delta_s'] / r['full_s']))
    r = result['restore']
    print('restore of a chain of %d (%s) into one file: %.1f s; the full '
          'image of the same point (%s) downloaded in %.1f s: %.2fx'
          % (r['depth'], human(r['chain_bytes']), r['restore_s'],
             human(r['full_bytes']), r['download_s'],
             r['restore_s'] / r['download_s']))


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    rows = result['rows']
    x = [r['fraction'] * 100 for r in rows]
    left.plot(x, [r['delta_bytes'] / MIB for r in rows], 'o-',
              label='incremental (delta)')
    left.plot(x, [r['full_bytes'] / MIB for r in rows], 's-', label='full')
    left.plot(x, [r['changed'] / MIB for r in rows], 'k:',
              label='bytes the guest changed')
    right.plot(x, [r['delta_s'] for r in rows], 'o-',
               label='incremental (delta)')
    right.plot(x, [r['full_s'] for r in rows], 's-', label='full')
    left.set(title='Uploaded', xlabel='changed fraction of the data (%)',
             ylabel='MiB', xscale='log', yscale='log')
    right.set(title='Snapshot wall time', xlabel='changed fraction (%)',
              ylabel='seconds', xscale='log')
    for axes in (left, right):
        axes.grid(alpha=0.3, which='both')
        axes.legend(fontsize=8)
    r = result['restore']
    figure.text(0.5, 0.01, 'TCG guest, %s of random data; restoring a chain '
                'of %d: %.1f s vs a full download %.1f s'
                % (snapshot_bench.human(result['data']), r['depth'],
                   r['restore_s'], r['download_s']), ha='center', fontsize=8)
    right.set_ylim(bottom=0)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default='4G', type=snapshot_bench.parse_size)
    parser.add_argument('--fractions', default='0.001,0.01,0.1,0.5',
                        type=lambda text: [float(f) for f in text.split(',')])
    parser.add_argument('--depth', type=int, default=7,
                        help='Images in the chain that is restored.')
    parser.add_argument('--settle', type=float,
                        default=snapshot_bench.SETTLE_S)
    parser.add_argument('--output', default=os.path.join(
        HERE, 'results-chains.json'))
    parser.add_argument('--plot-only', action='store_true',
                        help='Draw the plot from --output again.')
    args = parser.parse_args()
    png = os.path.splitext(args.output)[0] + '.png'
    if args.plot_only:
        with open(args.output) as f:
            result = json.load(f)
    else:
        workroot = tempfile.mkdtemp(prefix='vmsnap-bench-chains-',
                                    dir='/var/tmp')
        os.chmod(workroot, 0o755)
        memory_bench.configure(os.path.join(workroot, 'state'))
        config.CONF.set_override(
            'max_chain_length', args.depth, group='libvirt')
        try:
            result = run(args, workroot)
        finally:
            shutil.rmtree(workroot, ignore_errors=True)
        with open(args.output, 'w') as f:
            json.dump(result, f, indent=1)
    print_table(result)
    plot(result, png)


if __name__ == '__main__':
    main()
