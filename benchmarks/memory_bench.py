#!/usr/bin/env python3
"""Memory snapshots and reverts: pause and revert time against RAM and disk.

For each RAM size and disk data size, a real TCG guest is booted with that
much RAM, half of it filled with random data (a tmpfs file, so the memory
state does not compress to nothing; more runs a small guest out of
memory), on a disk holding that much random data, half in a qcow2 backing
file and half in its overlay (as the snapshot benchmark lays it out).
Then, through vmsnap's driver:

  snapshot   a memory snapshot into the local Glance: wall time to active
             images, the pause vmsnap records (``vmsnap_pause_seconds``)
             and the time libvirt showed the domain not running (polled
             every 10 ms), the memory state's size raw and stored;
  revert     a revert to it: wall time (download, stage, prove, swap) and
             the time the guest was not running.

It prints a table, writes benchmarks/results-memory.json and draws
benchmarks/results-memory.png.  Run as root on a host prepared by
tools/setup-host: ``tox -e bench-memory -- --ram 256M,1G --disk 256M,1G``.
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
from vmsnap_driver import config
from vmsnap_driver import driver as driver_mod

import snapshot_bench

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = snapshot_bench.MIB


def configure(state: str) -> None:
    conf = config.CONF
    config.parse_args([], default_config_files=[])
    conf.set_override('state_path', state)
    conf.set_override('lock_path', os.path.join(state, 'lock'),
                      group='oslo_concurrency')
    conf.set_override('auth_type', 'none', group='glance')
    conf.set_override('endpoint_override', snapshot_bench.GLANCE_URL,
                      group='glance')


def one(conn, glance, workroot: str, ram: int, data: int) -> dict:
    workdir = tempfile.mkdtemp(dir=workroot, prefix='guest-')
    os.chmod(workdir, 0o755)
    disk = snapshot_bench.build_disk(workdir, data)
    guest = testguest.TestGuest(conn, workdir, disk=disk,
                                memory_mib=ram // MIB,
                                fill_mib=ram // 2 // MIB)
    created = []
    try:
        guest.start(timeout=900)
        driver = driver_mod.LibvirtDriver()
        instance = types.SimpleNamespace(uuid=guest.uuid, name=guest.name)
        image = glance.images.create(name='bench memory',
                                     vmsnap_memory='true')
        created.append(image['id'])
        started = time.monotonic()
        with snapshot_bench.DowntimeMonitor(guest.uuid) as down:
            driver.snapshot(None, instance, image['id'])
        snapshot_s = time.monotonic() - started
        snap = glance.images.get(image['id'])
        memory = glance.images.get(snap['vmsnap_memory_image'])
        created.append(memory['id'])
        snapshot_bench.log('snapshot: %.1f s, paused %.3f s'
                           % (snapshot_s, float(snap['vmsnap_pause_seconds'])))
        started = time.monotonic()
        with snapshot_bench.DowntimeMonitor(guest.uuid) as revert_down:
            driver.revert(None, instance, image['id'])
        revert_s = time.monotonic() - started
        assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
        assert guest.boots() == 1, 'the guest booted instead of resuming'
        snapshot_bench.log('revert: %.1f s, not running %.2f s'
                           % (revert_s, revert_down.down))
        return {
            'ram': ram, 'data': data,
            'snapshot_s': snapshot_s,
            'pause_s': float(snap['vmsnap_pause_seconds']),
            'snapshot_not_running_s': down.down,
            'memory_raw': int(memory['vmsnap_memory_size']),
            'memory_stored': memory['size'],
            'revert_s': revert_s,
            'revert_not_running_s': revert_down.down,
        }
    finally:
        for image_id in created:
            glance.images.delete(image_id)
        guest.destroy()


def print_table(rows: list) -> None:
    header = ('RAM', 'disk data', 'snapshot', 'paused', 'not running',
              'memory raw/stored', 'revert', 'not running')
    print('%-8s %-10s %9s %8s %12s %20s %8s %12s' % header)
    for r in rows:
        print('%-8s %-10s %8.1fs %7.3fs %11.3fs %20s %7.1fs %11.2fs' % (
            snapshot_bench.human(r['ram']), snapshot_bench.human(r['data']),
            r['snapshot_s'], r['pause_s'], r['snapshot_not_running_s'],
            '%s / %s' % (snapshot_bench.human(r['memory_raw']),
                         snapshot_bench.human(r['memory_stored'])),
            r['revert_s'], r['revert_not_running_s']))


def plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for n, data in enumerate(sorted({r['data'] for r in rows})):
        series = sorted((r for r in rows if r['data'] == data),
                        key=lambda r: r['ram'])
        ram = [r['ram'] / MIB for r in series]
        label = 'disk data %s' % snapshot_bench.human(data)
        color = 'C%d' % n
        left.plot(ram, [r['pause_s'] * 1000 for r in series], 'o-',
                  color=color, label=label)
        right.plot(ram, [r['revert_s'] for r in series], 'o-', color=color,
                   label='revert, ' + label)
        right.plot(ram, [r['revert_not_running_s'] for r in series], 's--',
                   color=color, label='guest not running, ' + label)
    left.set(title='Memory snapshot: guest paused',
             xlabel='guest RAM (MiB)', ylabel='ms')
    right.set(title='Revert to a memory snapshot',
              xlabel='guest RAM (MiB)', ylabel='seconds')
    for axes in (left, right):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.text(0.5, 0.01, 'TCG guests, half of RAM filled with random data; '
                'disk data half in the backing file, half in the overlay',
                ha='center', fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ram', default='256M,1G')
    parser.add_argument('--disk', default='256M,1G')
    parser.add_argument('--output', default=os.path.join(
        HERE, 'results-memory.json'))
    parser.add_argument('--plot-only', action='store_true',
                        help='Draw the plot from --output again.')
    args = parser.parse_args()
    if args.plot_only:
        with open(args.output) as f:
            plot(json.load(f)['rows'],
                 os.path.splitext(args.output)[0] + '.png')
        return
    workroot = tempfile.mkdtemp(prefix='vmsnap-bench-memory-',
                                dir='/var/tmp')
    os.chmod(workroot, 0o755)
    configure(os.path.join(workroot, 'state'))
    conn = libvirt.open('qemu:///system')
    glance = glanceclient.Client('2', endpoint=snapshot_bench.GLANCE_URL)
    rows = []
    try:
        for ram in map(snapshot_bench.parse_size, args.ram.split(',')):
            for data in map(snapshot_bench.parse_size,
                            args.disk.split(',')):
                snapshot_bench.log('RAM %s, disk data %s' % (
                    snapshot_bench.human(ram), snapshot_bench.human(data)))
                rows.append(one(conn, glance, workroot, ram, data))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    print_table(rows)
    with open(args.output, 'w') as f:
        json.dump({'rows': rows, 'when': time.strftime('%Y-%m-%d')}, f,
                  indent=1)
    plot(rows, os.path.splitext(args.output)[0] + '.png')


if __name__ == '__main__':
    main()
