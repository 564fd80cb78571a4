#!/usr/bin/env python3
"""vmsnap against Nova's snapshot method, side by side, on this host.

For each data size, a real TCG guest is booted on a disk holding that much
data, half in a qcow2 backing file and half in its overlay, attached as
Nova attaches it: cache='none' where the directory takes O_DIRECT, else
'writeback' (Nova's default since bug 1818847).  Each round then runs every
method once, in rotating order, each in a child process of its own, into
the same local Glance:

  nova-live    Nova's libvirt driver, re-implemented from its documented
               behaviour: save the XML, undefine, blockRebase (copy,
               shallow, reuse-external) into a delta sharing the backing
               file, poll every 0.5 s, abort, define again, qemu-img
               convert the delta to qcow2 (-t none where O_DIRECT works, as
               nova/privsep/qemu.py does), upload the file in 1 MiB chunks.
  nova-cold    managedsave, qemu-img convert (the same way), start, upload.
  vmsnap-*     vmsnap's driver, through its public API, in live, cold and
               auto mode.
  *-compressed the same with compression: Nova's snapshot_compression =
               True (qemu-img convert -c), vmsnap's [libvirt]
               snapshot_compression = true (zlib).
  vmsnap-*-zstd  vmsnap compressed with snapshot_compression_type = zstd.

The data is random (--data random: nothing can be saved, the worst case)
or real (--data real: a Debian root filesystem, this host's own /usr, the
files hard-linked into a tree that mkfs.ext4 -d writes into the disk, with
free space around them; what a guest's disk holds).  The disk is
--virtual-ratio times the data (1.5 by default; a cloud guest's root disk,
a 20 GB flavor holding a 2 GB system, is 10).

Per method and size it reports the median and spread of: wall time until
the image is active, as a running service spends it (each snapshot runs in
a process of its own, whose start and imports are not counted), time the
guest was not running (libvirt's domain state, polled every 10 ms), bytes
written to and read from the host's disk (the block device's counters, page
cache dropped before and synced after each run; each run waits --settle
seconds after the drop, so that none inherits another's freshly freed
memory), bytes uploaded, the CPU seconds
and the peak RSS of the process doing the snapshot (its qemu-img children
included; not Glance's or QEMU's).  It also measures the floor: reading
the allocated data once plus uploading, with curl, the image vmsnap live
produced, read from storage (the bare upload, in every round beside the
snapshots: "x upload" divides by its median).  Every
image is compared with the guest's disk (qemu-img compare) before it
counts.

Run as root on a host prepared by tools/setup-host, from an environment
where vmsnap is installed (tox -e bench -- --sizes 256M,1G,4G).
"""

import argparse
import contextlib
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib

import requests

MIB = 1024 * 1024
GLANCE_URL = 'http://127.0.0.1:9292'      # tools/glance-local
SETTLE_S = 20.0     # see settle(): long enough for freed memory to go back
GLANCE_STORE = os.environ.get('VMSNAP_GLANCE_DIR',
                              '/var/lib/vmsnap-glance') + '/images'
METHODS = ['nova-live', 'vmsnap-live', 'nova-cold', 'vmsnap-cold',
           'vmsnap-auto']
REAL_METHODS = ['nova-live', 'nova-live-compressed', 'vmsnap-live',
                'vmsnap-live-compressed', 'vmsnap-live-zstd']
COMPRESSED = '-compressed'
ZSTD = '-zstd'
# Where the real data set's files come from: a Debian system's own.
REAL_SOURCE = '/usr'
# A disk's size against its data: 1.5 leaves a third of it free.
VIRTUAL_RATIO = 1.5


def parse_size(text: str) -> int:
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    text = text.strip().upper().rstrip('B').rstrip('I')
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(n) < 1024 or unit == 'GiB':
            return '%.1f %s' % (n, unit) if unit != 'B' else '%d B' % n
        n /= 1024.0


# -- the guest's disk ------------------------------------------------------
def virtual_size(data: int, ratio: float = VIRTUAL_RATIO) -> int:
    return (int(data * ratio) + MIB - 1) // MIB * MIB


def build_disk(workdir: str, data: int,
               ratio: float = VIRTUAL_RATIO) -> dict:
    """A qcow2 overlay over a qcow2 backing file, random data in both.

    Half the data at the start of the disk, half at the middle.
    """
    virtual = virtual_size(data, ratio)
    half = data // 2
    piece = 64 * MIB
    patterns = []
    for n in range(4):
        path = os.path.join(workdir, 'random%d.bin' % n)
        with open(path, 'wb') as f:
            f.write(os.urandom(piece))
        patterns.append(path)

    def fill(image, start, length, backing=None):
        cmd = ['qemu-img', 'create', '-q', '-f', 'qcow2']
        if backing:
            cmd += ['-b', backing, '-F', 'qcow2']
        subprocess.run(cmd + [image, str(virtual)], check=True)
        writes = []
        offset, n = start, 0
        while offset < start + length:
            size = min(piece, start + length - offset)
            writes += ['-c', 'write -q -s %s %d %d'
                       % (patterns[n % 4], offset, size)]
            offset += size
            n += 1
        for i in range(0, len(writes), 64):
            subprocess.run(['qemu-io', '-f', 'qcow2'] + writes[i:i + 64]
                           + [image], check=True, capture_output=True)

    base = os.path.join(workdir, 'base.qcow2')
    disk = os.path.join(workdir, 'disk.qcow2')
    fill(base, 0, half)
    fill(disk, virtual // 2, data - half, backing=base)
    for path in patterns:
        os.unlink(path)
    return {'path': disk, 'format': 'qcow2', 'backing': base,
            'virtual': virtual, 'data_bytes': data}


def _stage_files(tree: str, budget: int, source: str = REAL_SOURCE) -> int:
    """Hard-link regular files from ``source`` into ``tree``, up to budget.

    Links cost no copy, and the files stay the host's: mkfs.ext4 -d reads
    them.  Returns the bytes staged.
    """
    staged = 0
    for top, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            size = os.path.getsize(path)
            if staged + size > budget:
                continue
            dest = os.path.join(tree, os.path.relpath(path, '/'))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
            staged += size
    return staged


def _extents(raw: str) -> list:
    """The (start, end) of each allocated region of a sparse file."""
    extents = []
    with open(raw, 'rb') as f:
        fd, end, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < end:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, offset))
    return extents


def build_real_disk(workdir: str, data: int,
                    ratio: float = VIRTUAL_RATIO) -> dict:
    """A Debian root filesystem, half in the backing file, half above it.

    The first half of its allocated bytes go to the backing file, the rest
    are written through the overlay, as a guest writes them.
    """
    virtual = virtual_size(data, ratio)
    tree = os.path.join(workdir, 'tree')
    staged = _stage_files(tree, data)
    full = os.path.join(workdir, 'full.raw')
    subprocess.run(['truncate', '-s', str(virtual), full], check=True)
    subprocess.run(['mkfs.ext4', '-q', '-F', '-d', tree, full], check=True)
    shutil.rmtree(tree)
    extents = _extents(full)
    half, seen, upper = sum(b - a for a, b in extents) // 2, 0, []
    lower = os.path.join(workdir, 'lower.raw')
    subprocess.run(['cp', '--sparse=always', full, lower], check=True)
    for start, end in extents:
        cut = max(start, min(end, start + half - seen))
        seen += end - start
        if cut < end:
            upper.append((cut, end))
            subprocess.run(['fallocate', '-p', '-o', str(cut), '-l',
                            str(end - cut), lower], check=True)
    base = os.path.join(workdir, 'base.qcow2')
    disk = os.path.join(workdir, 'disk.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', lower,
                    base], check=True)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base,
                    '-F', 'qcow2', disk, str(virtual)], check=True)
    piece = os.path.join(workdir, 'piece.bin')
    with open(full, 'rb') as source:
        for start, end in upper:
            for offset in range(start, end, 64 * MIB):
                size = min(64 * MIB, end - offset)
                with open(piece, 'wb') as f:
                    f.write(os.pread(source.fileno(), size, offset))
                write = 'write -q -s %s %d %d' % (piece, offset, size)
                subprocess.run(['qemu-io', '-f', 'qcow2', '-c', write, disk],
                               check=True, capture_output=True)
    for path in (full, lower, piece):
        if os.path.exists(path):
            os.unlink(path)
    log('real data: %s of files from %s, %s in the backing file'
        % (human(staged), REAL_SOURCE, human(half)))
    return {'path': disk, 'format': 'qcow2', 'backing': base,
            'virtual': virtual, 'data_bytes': half * 2}


# -- measurements ----------------------------------------------------------
def nova_cache_mode(directory: str) -> str:
    """The cache mode Nova gives instance disks kept in ``directory``.

    Like Nova, write one aligned block with O_DIRECT: some filesystems
    accept the flag at open and refuse the write.
    """
    probe = os.path.join(directory, '.directio.test')
    block = mmap.mmap(-1, 4096)            # page-aligned, as O_DIRECT wants
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
        try:
            os.write(fd, block)
        finally:
            os.close(fd)
        return 'none'
    except OSError:
        return 'writeback'
    finally:
        block.close()
        if os.path.exists(probe):
            os.unlink(probe)


def block_device_of(path: str) -> str:
    dev = os.stat(path).st_dev
    sysfs = '/sys/dev/block/%d:%d' % (os.major(dev), os.minor(dev))
    if os.path.exists(os.path.join(sysfs, 'partition')):
        sysfs = os.path.join(sysfs, '..')
    return os.path.realpath(sysfs)


def disk_counters(sysfs: str) -> tuple:
    fields = open(os.path.join(sysfs, 'stat')).read().split()
    return int(fields[2]) * 512, int(fields[6]) * 512


def settle(seconds: float) -> None:
    """Start a run from the same memory state as every other.

    Dropping the page cache frees memory, and on a virtual machine that
    reports free pages to its host (free page reporting, virtio-balloon)
    the host takes it back only seconds later: until then, new page cache
    pages come almost free; afterwards each one costs the host a fault
    (measured here: 4.2 GB/s of file writes right after freeing 8 GiB, 1.7
    GB/s 5 s later, 0.39 GB/s from 20 s on).  Without a wait, a method
    that follows one churning much memory (Nova's, with its second full
    copy) gets Glance's writes at several times the speed.
    """
    subprocess.run(['sync'], check=True)
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')
    time.sleep(seconds)


def random_file(path: str, size: int) -> None:
    with open(path, 'wb') as f:
        for _ in range(size // (64 * MIB)):
            f.write(os.urandom(64 * MIB))
        f.write(os.urandom(size % (64 * MIB)))


def timed_upload(glance: str, path: str) -> float:
    """Seconds one PUT of the file at ``path`` into Glance takes.

    The cheapest client we know: curl sends the file with a
    Content-Length, in large pieces and with little CPU; requests sends
    8 KiB at a time, on the same two cores as Glance.  Drop the page cache
    first (settle()) to read the file from storage.
    """
    image = requests.post('%s/v2/images' % glance, json={
        'name': 'bench upload', 'disk_format': 'raw',
        'container_format': 'bare'})
    image.raise_for_status()
    url = '%s/v2/images/%s' % (glance, image.json()['id'])
    try:
        started = time.monotonic()
        subprocess.run(['curl', '-sSf', '-o', '/dev/null', '-T', path,
                        '-H', 'Content-Type: application/octet-stream',
                        url + '/file'], check=True)
        return time.monotonic() - started
    finally:
        requests.delete(url)


def _children_cpu() -> float:
    """User and system seconds of every child reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class DowntimeMonitor:
    """Sum of the time libvirt reports the domain as not running."""

    def __init__(self, uuid: str) -> None:
        import libvirt
        self._libvirt = libvirt
        self._conn = libvirt.open('qemu:///system')
        self._uuid = uuid
        self._stop = threading.Event()
        self.down = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _running(self) -> bool:
        try:
            dom = self._conn.lookupByUUIDString(self._uuid)
            return dom.state()[0] == self._libvirt.VIR_DOMAIN_RUNNING
        except self._libvirt.libvirtError:
            return False

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            running = self._running()
            now = time.monotonic()
            if not running:
                self.down += now - last
            last = now
            # Polling libvirtd faster would take CPU from the snapshot
            # being measured; 10 ms is fine for seconds and for zero.
            time.sleep(0.01)

    def __enter__(self) -> 'DowntimeMonitor':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


# -- the children: one snapshot each ---------------------------------------
def child_main(args: argparse.Namespace) -> None:
    """One snapshot; prints its seconds, as a running service spends them.

    What a compute service has done before its snapshots is done before
    the clock starts: Python's start and imports (a second for vmsnap's
    driver, less for Nova's few clients), its connections to libvirt and
    Glance (vmsnap's ``init_host``), and qemu-img, which a compute node
    runs for every guest it boots, back in the page cache that settle()
    emptied for the guest's disks.
    """
    subprocess.run(['qemu-img', '--version'], check=True,
                   stdout=subprocess.DEVNULL)
    if args.method.startswith('vmsnap-'):
        seconds = run_vmsnap(args)
    else:
        seconds = run_nova(args)
    status = open('/proc/self/status').read()
    hwm = [line for line in status.splitlines()
           if line.startswith('VmHWM')][0]
    print(json.dumps({'peak_rss_kib': int(hwm.split()[1]),
                      'snapshot_s': seconds}))


def run_vmsnap(args: argparse.Namespace) -> float:
    from vmsnap_driver import config
    from vmsnap_driver import driver
    conf = config.CONF
    conf([], project='vmsnap')
    conf.set_override('state_path', args.state)
    conf.set_override('snapshot_mode', args.method.split('-')[1],
                      group='libvirt')
    conf.set_override('snapshot_compression',
                      args.method.endswith((COMPRESSED, ZSTD)),
                      group='libvirt')
    conf.set_override('snapshot_compression_type',
                      'zstd' if args.method.endswith(ZSTD) else 'zlib',
                      group='libvirt')
    conf.set_override('auth_type', 'none', group='glance')
    conf.set_override('endpoint_override', args.glance, group='glance')

    class Instance:
        uuid = args.uuid
        name = 'bench'
    service = driver.LibvirtDriver(conf=conf)
    service.init_host('bench')
    started = time.monotonic()
    service.snapshot(None, Instance(), args.image)
    return time.monotonic() - started


def run_nova(args: argparse.Namespace) -> float:
    import glanceclient
    import libvirt
    conn = libvirt.open('qemu:///system')
    glance = glanceclient.Client('2', endpoint=args.glance)
    started = time.monotonic()
    dom = conn.lookupByUUIDString(args.uuid)
    out = os.path.join(args.state, 'snapshot.qcow2')
    os.makedirs(args.state, exist_ok=True)
    os.chmod(args.state, 0o755)
    # nova/privsep/qemu.py: the target is written with cache=none where
    # O_DIRECT works, so the flattened copy bypasses the page cache.
    convert = ['qemu-img', 'convert', '-t', nova_cache_mode(args.state),
               '-f', 'qcow2', '-O', 'qcow2']
    if args.method.endswith(COMPRESSED):
        convert.append('-c')      # nova/virt/images.py, compress=True
    if args.method.startswith('nova-live'):
        delta = os.path.join(args.state, 'delta.qcow2')
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                          libvirt.VIR_DOMAIN_XML_SECURE)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                        args.backing, '-F', 'qcow2', delta,
                        str(args.virtual)], check=True)
        dom.undefine()
        try:
            dom.blockRebase('vda', delta, 0,
                            libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY |
                            libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT |
                            libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW)
            while True:
                info = dom.blockJobInfo('vda', 0)
                if info and info['cur'] == info['end']:
                    break
                time.sleep(0.5)
            dom.blockJobAbort('vda', 0)
        finally:
            conn.defineXML(xml)
        subprocess.run(convert + [delta, out], check=True)
        os.unlink(delta)
    else:
        dom.managedSave(0)
        try:
            subprocess.run(convert + [args.disk, out], check=True)
        finally:
            dom.create()
    glance.images.update(args.image, disk_format='qcow2',
                         container_format='bare')

    class MiBChunks:
        """glanceclient asks for 64 KiB at a time; hand it 1 MiB."""

        def __init__(self, f):
            self._f = f

        def read(self, _size=-1):
            return self._f.read(MIB)
    with open(out, 'rb') as f:
        glance.images.upload(args.image, MiBChunks(f),
                             image_size=os.path.getsize(out))
    os.unlink(out)
    return time.monotonic() - started


# -- the parent ------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import glanceclient
        import libvirt
        self.args = args
        self.conn = libvirt.open('qemu:///system')
        self.glance = glanceclient.Client('2', endpoint=args.glance)
        self.root = tempfile.mkdtemp(prefix='vmsnap-bench-', dir='/var/tmp')
        os.chmod(self.root, 0o755)
        self.device = block_device_of(self.root)
        self.results = []
        self.floors = []

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def guest(self, data: int):
        from tests.functional import testguest
        workdir = os.path.join(self.root, 'guest-%d' % data)
        os.makedirs(workdir)
        os.chmod(workdir, 0o755)
        started = time.monotonic()
        disk = (build_real_disk if self.args.data == 'real'
                else build_disk)(workdir, data, self.args.virtual_ratio)
        guest = testguest.TestGuest(self.conn, workdir, disk=disk,
                                    name='vmsnap-bench-%s' % uuidlib.uuid4(
                                    ).hex[:6],
                                    cache=nova_cache_mode(workdir))
        guest.start()
        # The real data set hard-links this host's /usr, which changes the
        # ctime of every QEMU binary: libvirt then probes each again the
        # next time it is asked for its capabilities (4.3 s measured, paid
        # by whichever snapshot asks first). Paid here, once, as a host
        # pays it once after a QEMU upgrade.
        self.conn.getCapabilities()
        self.conn.getDomainCapabilities(None, None, None, 'qemu', 0)
        log('guest with %s of data ready in %.0f s'
            % (human(data), time.monotonic() - started))
        try:
            yield guest
        finally:
            guest.destroy()

    def run(self, method: str, guest, data: int, rnd: int) -> dict:
        image_id = self.glance.images.create(
            name='bench %s %s' % (method, human(data)))['id']
        state = os.path.join(self.root, 'state-' + method)
        # Whatever happens, leave no image (queued or active) behind.
        try:
            settle(self.args.settle)
            read0, write0 = disk_counters(self.device)
            cmd = [sys.executable, os.path.abspath(__file__), '--child',
                   method, '--uuid', guest.uuid, '--image', image_id,
                   '--glance', self.args.glance, '--state', state,
                   '--disk', guest.disk['path'],
                   '--backing', guest.disk['backing'],
                   '--virtual', str(guest.disk['virtual'])]
            cpu0 = _children_cpu()
            with DowntimeMonitor(guest.uuid) as monitor:
                started = time.monotonic()
                child = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                out, err = child.communicate()
                process = time.monotonic() - started
            cpu = _children_cpu() - cpu0
            subprocess.run(['sync'], check=True)
            read1, write1 = disk_counters(self.device)
            if child.returncode:
                raise RuntimeError('%s failed:\n%s' % (method, err[-3000:]))
            image = self.glance.images.get(image_id)
            assert image['status'] == 'active', image['status']
            printed = json.loads(out.strip().splitlines()[-1])
            wall = printed['snapshot_s']
            self.verify(image_id, image['disk_format'], guest)
            if method == 'vmsnap-live':
                # The floor uploads the very image vmsnap produced.
                shutil.copyfile(os.path.join(GLANCE_STORE, image_id),
                                self.produced(data))
        finally:
            self.glance.images.delete(image_id)
            shutil.rmtree(state, ignore_errors=True)
        result = {
            'method': method, 'data_bytes': data, 'round': rnd,
            'wall_s': wall, 'process_s': process,
            'downtime_s': monitor.down,
            'host_read_bytes': read1 - read0,
            'host_write_bytes': write1 - write0,
            'uploaded_bytes': image['size'], 'cpu_s': cpu,
            'peak_rss_mib': printed['peak_rss_kib'] / 1024.0,
            'capture_method': image.get('vmsnap_capture_method', method),
        }
        log('%-22s %8s round %d: %6.1f s, down %6.3f s, wrote %s, read %s, '
            'uploaded %s, cpu %.1f s, rss %.0f MiB'
            % (method, human(data), rnd, wall, monitor.down,
               human(result['host_write_bytes']),
               human(result['host_read_bytes']), human(image['size']), cpu,
               result['peak_rss_mib']))
        return result

    def verify(self, image_id: str, fmt: str, guest) -> None:
        """The stored image holds exactly the guest's disk."""
        stored = os.path.join(GLANCE_STORE, image_id)
        result = subprocess.run(
            ['qemu-img', 'compare', '-U', '-f', fmt, '-F', 'qcow2', stored,
             guest.disk['path']], capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError('image %s differs from the guest disk: %s'
                                 % (image_id, result.stdout + result.stderr))

    def produced(self, data: int) -> str:
        """Where the last image vmsnap live produced is kept for the floor."""
        return os.path.join(self.root, 'produced-%d.img' % data)

    def bare_upload(self, data: int, image_size: int) -> float:
        """One curl PUT of the image vmsnap live just produced.

        Run in every round, right after the snapshots it is compared with,
        so that a ratio to it does not cross minutes of a shared host's
        drift.  The image (or random bytes of that size) is read from
        storage: the page cache is dropped first, as before each snapshot.
        """
        produced = self.produced(data)
        if not os.path.exists(produced):
            random_file(produced, image_size)
        settle(self.args.settle)
        try:
            upload_s = timed_upload(self.args.glance, produced)
        finally:
            os.unlink(produced)
        log('bare upload %8s: %.1f s' % (human(data), upload_s))
        return upload_s

    def floor(self, guest, data: int, uploads: list) -> dict:
        """Read the allocated data once; the rounds' bare uploads."""
        from vmsnap_driver import qemu_img
        settle(self.args.settle)
        chain = qemu_img.info(guest.disk['path'], 'qcow2', force_share=True)
        files = {layer.path: open(layer.path, 'rb') for layer in chain}
        started = time.monotonic()
        mapping = json.loads(subprocess.run(
            ['qemu-img', 'map', '-U', '--output=json', '-f', 'qcow2',
             guest.disk['path']], check=True, capture_output=True,
            text=True).stdout)
        read = 0
        for extent in mapping:
            if not extent.get('data') or 'offset' not in extent:
                continue
            f = files[chain[extent['depth']].path]
            offset, end = extent['offset'], extent['offset'] + extent[
                'length']
            while offset < end:
                n = len(os.pread(f.fileno(), min(8 * MIB, end - offset),
                                 offset))
                read += n
                offset += n
        read_s = time.monotonic() - started
        for f in files.values():
            f.close()
        assert read >= guest.disk['data_bytes'], (read, guest.disk)
        upload_s = statistics.median(uploads)
        floor = {'data_bytes': data, 'read_s': read_s,
                 'upload_s': upload_s, 'upload_runs': uploads,
                 'floor_s': read_s + upload_s}
        log('floor %8s: read %.1f s + upload %.1f s = %.1f s'
            % (human(data), read_s, upload_s, read_s + upload_s))
        return floor

    def main(self) -> None:
        for data in self.args.sizes:
            with self.guest(data) as guest:
                uploads = []
                for rnd in range(self.args.rounds):
                    # Rotate the order so no method always runs first.
                    shift = rnd % len(self.args.methods)
                    order = (self.args.methods[shift:] +
                             self.args.methods[:shift])
                    for method in order:
                        self.results.append(self.run(method, guest, data,
                                                     rnd))
                    uploads.append(self.bare_upload(data, self._uploaded(
                        data)))
                self.floors.append(self.floor(guest, data, uploads))

    def _uploaded(self, data: int) -> int:
        """The size of vmsnap live's last image of ``data``, or ``data``."""
        live = [r for r in self.results
                if r['data_bytes'] == data and r['method'] == 'vmsnap-live']
        return live[-1]['uploaded_bytes'] if live else data


def summarize(results: list, floors: list) -> dict:
    keys = ('wall_s', 'downtime_s', 'host_write_bytes', 'host_read_bytes',
            'uploaded_bytes', 'cpu_s', 'peak_rss_mib')
    summary = {}
    for r in results:
        summary.setdefault((r['data_bytes'], r['method']), []).append(r)
    rows = []
    for (data, method), runs in sorted(summary.items()):
        row = {'data_bytes': data, 'method': method, 'rounds': len(runs),
               'capture_method': runs[-1]['capture_method']}
        for key in keys:
            values = [r[key] for r in runs]
            row[key] = statistics.median(values)
            row[key + '_spread'] = max(values) - min(values)
        rows.append(row)
    by = {(r['data_bytes'], r['method']): r for r in rows}
    for row in rows:
        mode = row['method'].split('-', 1)[1]
        nova = by.get((row['data_bytes'], 'nova-' + (
            'live' if mode == 'auto' else mode)))
        if row['method'].startswith('vmsnap-') and nova:
            row['ratio_wall_vs_nova'] = row['wall_s'] / nova['wall_s']
            row['ratio_writes_vs_nova'] = (
                row['host_write_bytes'] / max(nova['host_write_bytes'], 1))
        compressed = by.get((row['data_bytes'], 'nova-live' + COMPRESSED))
        if row['method'].startswith('vmsnap-') and compressed:
            row['ratio_wall_vs_nova_compressed'] = (
                row['wall_s'] / compressed['wall_s'])
        floor = [f for f in floors if f['data_bytes'] == row['data_bytes']]
        if floor:
            row['ratio_wall_vs_floor'] = row['wall_s'] / floor[0]['floor_s']
            row['ratio_wall_vs_upload'] = (row['wall_s']
                                           / floor[0]['upload_s'])
    return {'rows': rows, 'floors': floors, 'runs': results}


def print_table(summary: dict) -> None:
    header = ('%-8s %-22s %-19s %9s %9s %10s %10s %10s %6s %8s %7s %7s %7s '
              '%7s %8s'
              % ('data', 'method', 'capture', 'wall s', 'down s', 'written',
                 'read', 'uploaded', 'cpu s', 'rss MiB', 'x nova', 'w/nova',
                 'x nova-c', 'x floor', 'x upload'))
    print(header)
    print('-' * len(header))
    for row in summary['rows']:
        print('%-8s %-22s %-19s %5.1f±%-3.1f %9.3f %10s %10s %10s %6.1f '
              '%8.0f %7s %7s %7s %7s %8s'
              % (human(row['data_bytes']), row['method'],
                 row['capture_method'], row['wall_s'],
                 row['wall_s_spread'], row['downtime_s'],
                 human(row['host_write_bytes']),
                 human(row['host_read_bytes']),
                 human(row['uploaded_bytes']), row.get('cpu_s', 0),
                 row['peak_rss_mib'],
                 _ratio(row, 'ratio_wall_vs_nova'),
                 _ratio(row, 'ratio_writes_vs_nova'),
                 _ratio(row, 'ratio_wall_vs_nova_compressed'),
                 _ratio(row, 'ratio_wall_vs_floor'),
                 _ratio(row, 'ratio_wall_vs_upload')))
    for floor in summary['floors']:
        print('floor %s: read %.1f s + upload %.1f s = %.1f s'
              % (human(floor['data_bytes']), floor['read_s'],
                 floor['upload_s'], floor['floor_s']))


def _ratio(row: dict, key: str) -> str:
    return '%.2f' % row[key] if key in row else '-'


# One marker per method, drawn hollow and largest first, so that series
# that coincide (every live method's pause is ~0 s) stay visible.
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X')

FLOOR_CAPTION = (
    'floor: the disk\'s allocated clusters read once from its files, plus '
    'one bare upload of an image that size to the same Glance, timed one '
    'after the other in this run; a snapshot that reads while it uploads '
    'can finish below it.')


def size_label(mib: float) -> str:
    return ('%g GiB' % (mib / 1024)) if mib >= 1024 else '%g MiB' % mib


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    fig, (wall_ax, down_ax) = pyplot.subplots(1, 2, figsize=(11, 4.8))
    methods = sorted({r['method'] for r in summary['rows']})
    for n, method in enumerate(methods):
        rows = [r for r in summary['rows'] if r['method'] == method]
        x = [r['data_bytes'] / MIB for r in rows]
        style = dict(linestyle='--' if method.startswith('nova') else '-',
                     marker=MARKERS[n % len(MARKERS)],
                     markersize=11 - 1.2 * n, markerfacecolor='none',
                     label=method)
        wall_ax.plot(x, [r['wall_s'] for r in rows], **style)
        down_ax.plot(x, [r['downtime_s'] for r in rows], **style)
    floors = summary['floors']
    wall_ax.plot([f['data_bytes'] / MIB for f in floors],
                 [f['floor_s'] for f in floors], ':', marker='x', color='grey',
                 label='floor (see below)')
    sizes = sorted({r['data_bytes'] / MIB for r in summary['rows']})
    for ax, title in ((wall_ax, 'time until the image is active'),
                      (down_ax, 'time the guest was not running')):
        ax.set_xscale('log', base=2)
        ax.set_xticks(sizes, [size_label(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel('%s data in the disk' % summary.get('data', 'random'))
        ax.set_ylabel('seconds')
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.text(0.01, 0.01, FLOOR_CAPTION, fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def log(message: str) -> None:
    print('[%s] %s' % (time.strftime('%H:%M:%S'), message), file=sys.stderr,
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('--sizes', default='256M,1G,4G',
                        help='data sizes, comma separated (default: '
                             '%(default)s)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--settle', type=float, default=SETTLE_S,
                        help='seconds to wait after dropping the page cache '
                             'before each measurement (default: '
                             '%(default)s)')
    parser.add_argument('--data', choices=('random', 'real'),
                        default='random',
                        help='what the disk holds (default: %(default)s)')
    parser.add_argument('--virtual-ratio', type=float, default=VIRTUAL_RATIO,
                        help='the disk\'s size against its data (default: '
                             '%(default)s; a cloud guest\'s root disk is '
                             'often 10 or more)')
    parser.add_argument('--methods',
                        help='comma separated (default: %s; with --data '
                             'real: %s)' % (','.join(METHODS),
                                            ','.join(REAL_METHODS)))
    parser.add_argument('--glance', default=GLANCE_URL)
    parser.add_argument('--output',
                        help='default: benchmarks/results.json, or '
                             'results-real.json with --data real')
    parser.add_argument('--plot', help='default: the output\'s .png')
    # Internal: one snapshot in a child process.
    for name in ('--child', '--uuid', '--image', '--state', '--disk',
                 '--backing'):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument('--virtual', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        child_main(args)
        return
    args.sizes = [parse_size(s) for s in args.sizes.split(',')]
    args.methods = (args.methods.split(',') if args.methods else
                    REAL_METHODS if args.data == 'real' else METHODS)
    args.output = args.output or 'benchmarks/results%s.json' % (
        '-real' if args.data == 'real' else '')
    args.plot = args.plot or os.path.splitext(args.output)[0] + '.png'
    bench = Bench(args)
    try:
        bench.main()
    finally:
        bench.close()
        # A failure late in a long run keeps what was measured before it.
        if bench.results:
            report(bench, args)


def report(bench: Bench, args: argparse.Namespace) -> None:
    summary = summarize(bench.results, bench.floors)
    summary['data'] = args.data
    summary['virtual_ratio'] = args.virtual_ratio
    summary['host'] = {'nproc': os.cpu_count(),
                       'date': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                             time.gmtime())}
    with open(args.output, 'w') as f:
        json.dump(summary, f, indent=2)
    print_table(summary)
    try:
        plot(summary, args.plot)
        print('plot: %s' % args.plot)
    except ImportError:
        print('matplotlib is not installed: no plot')
    print('results: %s' % args.output)


if __name__ == '__main__':
    main()
