#!/usr/bin/env python3
"""Export and import time and peak memory against disk size.

For each size, a qcow2 disk holding that much random data is put into the
local Glance as a vmsnap snapshot (content digest and a domain XML
recorded), then ``vmsnap export`` writes it as an OVA and ``vmsnap import``
brings it back as an image, each as its own process: wall time and peak
RSS (``wait4``) of each.  Export streams from Glance into the file, so its
memory should not grow with the disk.  It prints a table, writes
benchmarks/results-archive.json and draws benchmarks/results-archive.png.
Run as root on a host prepared by tools/setup-host: ``tox -e
bench-archive -- --sizes 256M,1G,4G``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import glanceclient

from vmsnap_driver import digest
from vmsnap_driver import domain_record

import snapshot_bench

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = snapshot_bench.MIB
BIN = os.path.dirname(sys.executable)
DOMAIN = ("<domain type='qemu'><name>bench</name>"
          "<uuid>00000000-0000-4000-8000-000000000001</uuid>"
          "<memory unit='MiB'>256</memory><vcpu>1</vcpu>"
          "<os><type>hvm</type></os><devices><disk type='file' "
          "device='disk'><driver name='qemu' type='qcow2'/>"
          "<source file='/x'/><target dev='vda' bus='virtio'/></disk>"
          "</devices></domain>")


def timed(*cmd: str) -> tuple:
    """Run ``cmd``; its wall time (s), peak RSS (MiB) and stdout."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        out.seek(0)
        text = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError('%s failed:\n%s' % (' '.join(cmd), text))
    return elapsed, usage.ru_maxrss / 1024, text


def run(args: argparse.Namespace, workroot: str) -> dict:
    glance = glanceclient.Client('2', snapshot_bench.GLANCE_URL)
    conf = os.path.join(workroot, 'vmsnap.conf')
    with open(conf, 'w') as f:
        f.write('[DEFAULT]\nstate_path = %s\n[glance]\nauth_type = none\n'
                'endpoint_override = %s\n[libvirt]\nsnapshots_directory = '
                '%s\n' % (os.path.join(workroot, 'state'),
                          snapshot_bench.GLANCE_URL,
                          os.path.join(workroot, 'snapshots')))
    vmsnap = [os.path.join(BIN, 'vmsnap'), '--config-file', conf]
    rows = []
    for size in args.sizes:
        raw = os.path.join(workroot, 'disk.raw')
        disk = os.path.join(workroot, 'disk.qcow2')
        with open(raw, 'wb') as f:
            for _ in range(size // (16 * MIB)):
                f.write(os.urandom(16 * MIB))
        subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                        raw, disk], check=True)
        os.unlink(raw)
        image = glance.images.create(name='bench-archive',
                                     disk_format='qcow2',
                                     container_format='bare')
        made = [image['id']]
        try:
            glance.images.update(
                image['id'], vmsnap_source_disk='vda',
                instance_uuid='00000000-0000-4000-8000-000000000001',
                vmsnap_content_sha256=digest.of_file(disk, 'qcow2'),
                **domain_record.properties(DOMAIN))
            with open(disk, 'rb') as f:
                glance.images.upload(image['id'], f)
            os.unlink(disk)
            archive = os.path.join(workroot, 'bench.ova')
            snapshot_bench.settle(args.settle)
            export_s, export_mib, _out = timed(
                *vmsnap, 'export', image['id'], '--output', archive,
                '--no-progress')
            snapshot_bench.settle(args.settle)
            import_s, import_mib, out = timed(
                *vmsnap, 'import', archive, '--no-progress')
            made += [line.split()[1] for line in out.splitlines()
                     if line.startswith('vda ')]
            rows.append({'size': size,
                         'archive_bytes': os.path.getsize(archive),
                         'export_s': export_s, 'export_rss_mib': export_mib,
                         'import_s': import_s, 'import_rss_mib': import_mib})
            os.unlink(archive)
        finally:
            for image_id in made:
                glance.images.delete(image_id)
    return {'rows': rows}


def print_table(result: dict) -> None:
    print('%10s %12s %10s %12s %10s %12s' % (
        'disk', 'archive', 'export s', 'export RSS', 'import s',
        'import RSS'))
    for r in result['rows']:
        print('%10s %12s %10.1f %9.0f MiB %10.1f %9.0f MiB' % (
            snapshot_bench.human(r['size']),
            snapshot_bench.human(r['archive_bytes']), r['export_s'],
            r['export_rss_mib'], r['import_s'], r['import_rss_mib']))


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    rows = result['rows']
    x = [r['size'] / 2 ** 30 for r in rows]
    for key, label in (('export', 'vmsnap export'),
                       ('import', 'vmsnap import')):
        left.plot(x, [r[key + '_s'] for r in rows], 'o-', label=label)
        right.plot(x, [r[key + '_rss_mib'] for r in rows], 'o-',
                   label=label)
    left.set(title='Wall time', xlabel='disk data (GiB)', ylabel='seconds')
    right.set(title='Peak RSS', xlabel='disk data (GiB)', ylabel='MiB')
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='256M,1G,2G', type=lambda t: [
        snapshot_bench.parse_size(s) for s in t.split(',')])
    parser.add_argument('--settle', type=float,
                        default=snapshot_bench.SETTLE_S)
    parser.add_argument('--output', default=os.path.join(
        HERE, 'results-archive.json'))
    parser.add_argument('--plot-only', action='store_true')
    args = parser.parse_args()
    png = os.path.splitext(args.output)[0] + '.png'
    if args.plot_only:
        with open(args.output) as f:
            result = json.load(f)
    else:
        workroot = tempfile.mkdtemp(prefix='vmsnap-bench-archive-',
                                    dir='/var/tmp')
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
