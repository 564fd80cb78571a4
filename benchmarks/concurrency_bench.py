#!/usr/bin/env python3
"""Many guests snapshotted at once through vmsnap-compute, on this host.

Up to the largest --guests count, real TCG guests run on real-data disks
(snapshot_bench's Debian root filesystem: one backing file shared by all,
as Nova shares a base image, and an overlay of each guest's own holding
the other half).  For each count N a fresh vmsnap-compute, with
``max_concurrent_snapshots = N``, receives N createImage requests at once
and the benchmark polls every server until its task ends.  It reports the
total time, each snapshot's time, the bytes per second into Glance, the
CPU seconds of vmsnap-compute and of Glance, and vmsnap-compute's peak RSS;
every image must be active.

Run as root on a host prepared by tools/setup-host (tox -e bench-concurrency
-- --guests 1,2,4,8 --data 512M).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import libvirt
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snapshot_bench  # noqa: E402  (a sibling script, not a package)

from tests.functional import service as service_mod  # noqa: E402
from tests.functional import testguest  # noqa: E402

GLANCE_PIDFILE = os.environ.get('VMSNAP_GLANCE_DIR',
                                '/var/lib/vmsnap-glance') + '/gunicorn.pid'
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
# The longest the benchmark waits for all the snapshots of one count.
DEADLINE_S = 1800


def _cpu_seconds(pid: int) -> float:
    """User and system time of a process and its reaped children."""
    fields = open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def _glance_pids() -> list:
    master = int(open(GLANCE_PIDFILE).read())
    workers = subprocess.run(['pgrep', '-P', str(master)],
                             capture_output=True, text=True).stdout.split()
    return [master] + [int(pid) for pid in workers]


def _peak_rss_mib(pid: int) -> float:
    for line in open('/proc/%d/status' % pid):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024.0
    return 0.0


def make_guests(conn, root: str, count: int, data: int) -> list:
    template = os.path.join(root, 'template')
    os.makedirs(template)
    os.chmod(template, 0o755)
    disk = snapshot_bench.build_real_disk(template, data)
    guests = []
    for n in range(count):
        workdir = os.path.join(root, 'guest-%d' % n)
        os.makedirs(workdir)
        os.chmod(workdir, 0o755)
        own = os.path.join(workdir, 'disk.qcow2')
        subprocess.run(['cp', '--sparse=always', disk['path'], own],
                       check=True)
        guest = testguest.TestGuest(
            conn, workdir, name='vmsnap-conc-%d' % n,
            disk=dict(disk, path=own),
            cache=snapshot_bench.nova_cache_mode(workdir))
        guest.start()
        guests.append(guest)
    snapshot_bench.log('%d guests of %s each ready'
                       % (count, snapshot_bench.human(data)))
    return guests


def run(root: str, glance: str, guests: list, settle: float) -> dict:
    count = len(guests)
    snapshot_bench.settle(settle)
    svc = service_mod.Service(root, glance,
                              DEFAULT={'max_concurrent_snapshots': count},
                              libvirt={'snapshot_mode': 'live'})
    svc.start()
    images = {}
    try:
        pids = _glance_pids()
        cpu0 = _cpu_seconds(svc.proc.pid)
        glance0 = sum(_cpu_seconds(pid) for pid in pids)
        started = time.monotonic()
        for guest in guests:
            images[guest.uuid] = svc.start_snapshot(
                guest, 'concurrency %d' % count)
        ended = {}
        while len(ended) < count:
            assert time.monotonic() - started < DEADLINE_S, (
                'snapshots still running', svc.log_text()[-2000:])
            for guest in guests:
                if guest.uuid not in ended and svc.request(
                        'GET', '/v2.1/servers/' + guest.uuid)[2]['server'][
                            'OS-EXT-STS:task_state'] is None:
                    ended[guest.uuid] = time.monotonic() - started
            time.sleep(0.1)
        total = max(ended.values())
        cpu = _cpu_seconds(svc.proc.pid) - cpu0
        glance_cpu = sum(_cpu_seconds(pid) for pid in pids) - glance0
        rss = _peak_rss_mib(svc.proc.pid)
        uploaded = 0
        for image_id in images.values():
            image = requests.get('%s/v2/images/%s' % (glance, image_id)
                                 ).json()
            assert image['status'] == 'active', (image,
                                                 svc.log_text()[-2000:])
            uploaded += image['size']
    finally:
        for image_id in images.values():
            requests.delete('%s/v2/images/%s' % (glance, image_id))
        svc.stop()
        shutil.rmtree(svc.dir, ignore_errors=True)
    result = {'guests': count, 'total_s': total,
              'per_snapshot_s': sorted(ended.values()),
              'mean_snapshot_s': statistics.mean(ended.values()),
              'uploaded_bytes': uploaded,
              'glance_mib_per_s': uploaded / total / snapshot_bench.MIB,
              'vmsnap_cpu_s': cpu, 'glance_cpu_s': glance_cpu,
              'vmsnap_peak_rss_mib': rss}
    snapshot_bench.log(
        '%d at once: %.1f s in all, %.1f s each on average, %s into Glance '
        '(%.0f MiB/s), vmsnap %.1f CPU s, Glance %.1f CPU s, rss %.0f MiB'
        % (count, total, result['mean_snapshot_s'],
           snapshot_bench.human(uploaded), result['glance_mib_per_s'], cpu,
           glance_cpu, rss))
    return result


def plot(results: list, data: int, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    fig, (time_ax, rate_ax) = pyplot.subplots(1, 2, figsize=(11, 4.4))
    counts = [r['guests'] for r in results]
    time_ax.plot(counts, [r['total_s'] for r in results], '-o',
                 label='all of them done')
    time_ax.plot(counts, [r['mean_snapshot_s'] for r in results], '--s',
                 markerfacecolor='none', label='one snapshot, on average')
    time_ax.plot(counts, [results[0]['total_s'] * n for n in counts], ':',
                 color='grey', label='one after another (1 × N)')
    rate_ax.plot(counts, [r['glance_mib_per_s'] for r in results], '-o',
                 label='into Glance')
    for ax, title, unit in ((time_ax, 'time', 'seconds'),
                            (rate_ax, 'throughput', 'MiB/s')):
        ax.set_xscale('log', base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel('guests snapshotted at once (%s of real data each)'
                      % snapshot_bench.size_label(data / snapshot_bench.MIB))
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('--guests', default='1,2,4,8')
    parser.add_argument('--data', default='512M',
                        help='real data in each guest\'s disk')
    parser.add_argument('--settle', type=float,
                        default=snapshot_bench.SETTLE_S)
    parser.add_argument('--glance', default=snapshot_bench.GLANCE_URL)
    parser.add_argument('--output',
                        default='benchmarks/results-concurrency.json')
    args = parser.parse_args()
    counts = [int(n) for n in args.guests.split(',')]
    data = snapshot_bench.parse_size(args.data)
    conn = libvirt.open('qemu:///system')
    root = tempfile.mkdtemp(prefix='vmsnap-concurrency-', dir='/var/tmp')
    os.chmod(root, 0o755)
    guests = []
    try:
        guests = make_guests(conn, root, max(counts), data)
        results = [run(root, args.glance, guests[:n], args.settle)
                   for n in counts]
    finally:
        for guest in guests:
            guest.destroy()
        shutil.rmtree(root, ignore_errors=True)
    with open(args.output, 'w') as f:
        json.dump({'data_bytes': data, 'results': results,
                   'host': {'nproc': os.cpu_count(),
                            'date': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                                  time.gmtime())}},
                  f, indent=2)
    print('%6s %9s %9s %10s %9s %9s %9s %8s' % (
        'guests', 'total s', 'each s', 'uploaded', 'MiB/s', 'vmsnap s',
        'glance s', 'rss MiB'))
    for r in results:
        print('%6d %9.1f %9.1f %10s %9.0f %9.1f %9.1f %8.0f' % (
            r['guests'], r['total_s'], r['mean_snapshot_s'],
            snapshot_bench.human(r['uploaded_bytes']), r['glance_mib_per_s'],
            r['vmsnap_cpu_s'], r['glance_cpu_s'], r['vmsnap_peak_rss_mib']))
    try:
        plot(results, data, os.path.splitext(args.output)[0] + '.png')
    except ImportError:
        print('matplotlib is not installed: no plot')
    print('results: %s' % args.output)


if __name__ == '__main__':
    main()
