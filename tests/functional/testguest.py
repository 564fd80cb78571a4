"""A real, tiny QEMU guest for functional tests and the demo.

The guest is Debian's kernel plus a busybox initramfs, built from Debian
packages at test time so that no image has to be downloaded or stored in the
tree.  It boots under TCG in seconds, mounts its first disk (ext4), writes a
file that the test knows byte for byte, then rewrites and fsyncs a counter
every half second, reporting each step on its serial console so that a test
can tell exactly what the guest had made durable before and after a snapshot.
"""

import base64
import functools
import glob
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from typing import Optional
import uuid as uuidlib
from xml.sax import saxutils

import libvirt
import libvirt_qemu

CACHE_DIR = os.environ.get('VMSNAP_TEST_CACHE', '/var/cache/vmsnap-test')

# Debian ships these as modules, without modules.dep: load them in
# dependency order.
MODULES = ('virtio_ring', 'virtio', 'virtio_pci_modern_dev',
           'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk',
           'virtio_console', 'crc16', 'mbcache', 'jbd2', 'crc32c_generic',
           'ext4')

BOOT_FILE_SIZE = 2 * 1024 * 1024
BASE_FILE_SIZE = 4 * 1024 * 1024

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %(modules)s; do insmod /lib/modules/$m.ko; done
while [ ! -b /dev/vda ]; do sleep 0.1; done
echo "VMSNAP-BOOT $(cat /proc/sys/kernel/random/boot_id)"
%(workload)s
"""

# Mount the disk, write a known file, then rewrite and fsync a counter (on
# every disk, in one loop, when the guest has a second one).
WRITER = r"""mkdir -p /mnt /mnt2
mount -t ext4 /dev/vda /mnt || { echo VMSNAP-MOUNT-FAILED; poweroff -f; }
COUNTERS=/mnt/counter
if [ -b /dev/vdb ]; then
    mount -t ext4 /dev/vdb /mnt2 || { echo VMSNAP-MOUNT-FAILED; poweroff -f; }
    COUNTERS="$COUNTERS /mnt2/counter"
fi
cp /boot.bin /mnt/boot.bin
sync /mnt/boot.bin
sync
echo VMSNAP-READY
n=0
while true; do
    n=$((n + 1))
    # Replaced whole (a rename), never truncated then written: a freeze
    # between the two would capture an empty file.
    for c in $COUNTERS; do
        echo $n > $c.new; sync $c.new; mv $c.new $c; sync -f $c
    done
    echo "VMSNAP-COUNTER $n"
    sleep %(period)s
done"""

# qemu-guest-agent on its virtio-serial port, so that libvirt can freeze
# the guest's filesystems; its pid is kept for tests that stop it.
AGENT = r"""mkdir -p /dev/virtio-ports /var/run /tmp
for port in /sys/class/virtio-ports/*; do
    ln -sf /dev/${port##*/} /dev/virtio-ports/$(cat $port/name)
done
/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
    -t /tmp &
echo $! > /tmp/qga.pid
"""

# Fill part of the guest's memory with random data (a tmpfs file), so that
# its memory state is not mostly zeros.
FILL = r"""mkdir -p /dev/shm
mount -t tmpfs -o size=%(mib)dM tmpfs /dev/shm
dd if=/dev/urandom of=/dev/shm/fill bs=1M count=%(mib)d 2>/dev/null
"""

# Leave the disk alone (its content is whatever the host put there), but
# keep counting on the console to show the guest runs.
IDLE = r"""echo VMSNAP-READY
n=0
while true; do
    n=$((n + 1))
    echo "VMSNAP-COUNTER $n"
    sleep 0.5
done"""

SECOND_DISK = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
"""

# The owner as Nova writes it into the domains it creates.
NOVA_OWNER = """  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:owner>
        <nova:user uuid="%(user)s">user</nova:user>
        <nova:project uuid="%(project)s">project</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
"""

AGENT_CHANNEL = """    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
"""

DOMAIN_XML = """<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
%(metadata)s  <memory unit='MiB'>%(memory_mib)d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='%(disk_format)s'%(cache)s/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
%(second_disk)s    <serial type='file'>
      <source path='%(console)s' append='on'/>
      <target port='0'/>
    </serial>
%(channel)s    <memballoon model='none'/>
  </devices>
</domain>
"""


# Skip what only slows a throwaway TCG guest: the crypto self-tests, the
# speculation mitigations' patching and the timer check.
CMDLINE = ('console=ttyS0 panic=-1 quiet cryptomgr.notests mitigations=off '
           'no_timer_check')

# The XZ stream a bzImage carries its kernel in.
XZ_MAGIC = b'\xfd7zXZ\x00'


def _run(*cmd: str, cwd: Optional[str] = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def _download(package: str, dest: str) -> str:
    found = glob.glob(os.path.join(dest, package + '_*.deb'))
    if not found:
        _run('apt-get', 'download', package, cwd=dest)
        found = glob.glob(os.path.join(dest, package + '_*.deb'))
    return found[0]


def _extract(deb: str, members: list, dest: str) -> None:
    """Extract only some members: the whole kernel package is ~400 MB."""
    proc = subprocess.Popen(['dpkg-deb', '--fsys-tarfile', deb],
                            stdout=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdout, mode='r|') as tar:
        for member in tar:
            if member.name in members and member.isfile():
                data = tar.extractfile(member).read()
                with open(os.path.join(dest, os.path.basename(member.name)),
                          'wb') as f:
                    f.write(data)
    proc.wait()


def _unpack_kernel(bzimage: str, dest: str) -> None:
    """The ELF kernel inside Debian's bzImage, for QEMU's PVH entry.

    Under TCG, SeaBIOS loading a bzImage and the kernel decompressing
    itself take ~4 s of a ~10 s boot; QEMU starts an ELF kernel with a PVH
    note (Debian's has one) directly, halving every test guest's boot.
    """
    with open(bzimage, 'rb') as f:
        data = f.read()
    start = data.find(XZ_MAGIC)
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        elf = decompressor.decompress(data[start:]) if start >= 0 else b''
    except lzma.LZMAError:
        elf = b''
    if not (decompressor.eof and elf.startswith(b'\x7fELF')):
        shutil.copy(bzimage, dest)    # not what we know: boot it, slower
        return
    with open(dest, 'wb') as f:
        f.write(elf)


@functools.lru_cache(maxsize=None)
def kernel_version() -> str:
    """Asked once per process: apt-cache takes ~2 s of CPU here."""
    out = _run('apt-cache', 'depends', 'linux-image-amd64')
    match = re.search(r'Depends: linux-image-(\S+)', out)
    return match.group(1)


def guest_kit() -> dict:
    """Kernel, busybox, modules and qemu-ga, cached across test runs."""
    version = kernel_version()
    kit = os.path.join(CACHE_DIR, version)
    files = {'kernel': os.path.join(kit, 'vmlinux'),
             'busybox': os.path.join(kit, 'busybox'),
             'agent': os.path.join(kit, 'qemu-ga')}
    wanted = {mod + '.ko' for mod in MODULES}
    needed = list(files.values()) + [os.path.join(kit, m) for m in wanted]
    if not all(os.path.exists(path) for path in needed):
        os.makedirs(kit, mode=0o755, exist_ok=True)
        os.chmod(CACHE_DIR, 0o755)
        tmp = tempfile.mkdtemp(dir=kit)
        try:
            deb = _download('linux-image-' + version, tmp)
            members = ['./boot/vmlinuz-' + version] + [
                path for path in
                (line.split()[-1] for line in
                 _run('dpkg-deb', '-c', deb).splitlines())
                if os.path.basename(path) in wanted]
            _extract(deb, members, tmp)
            _extract(_download('busybox-static', tmp), ['./bin/busybox'],
                     tmp)
            _extract(_download('qemu-guest-agent', tmp),
                     ['./usr/sbin/qemu-ga'], tmp)
            _unpack_kernel(os.path.join(tmp, 'vmlinuz-' + version),
                           os.path.join(tmp, 'vmlinux'))
            for name in ['vmlinux', 'busybox', 'qemu-ga'] + sorted(wanted):
                os.chmod(os.path.join(tmp, name), 0o755)
                os.replace(os.path.join(tmp, name), os.path.join(kit, name))
        finally:
            shutil.rmtree(tmp)
    return dict(files, dir=kit)


def _add_agent(kit: dict, root: str) -> None:
    """qemu-ga and the host libraries it links (Debian's, like the guest's)."""
    shutil.copy(kit['agent'], os.path.join(root, 'sbin/qemu-ga'))
    for path in re.findall(r'(/\S+\.so[.\d]*) \(0x',
                           _run('ldd', kit['agent'])):
        dest = os.path.join(root, path.lstrip('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(os.path.realpath(path), dest)


def build_initramfs(kit: dict, dest: str, boot_data: bytes,
                    workload: str = WRITER, agent: bool = False) -> None:
    """Pack init, busybox, the modules and the boot payload with busybox."""
    root = tempfile.mkdtemp()
    try:
        for sub in ('bin', 'sbin', 'lib/modules', 'proc', 'sys', 'dev',
                    'mnt'):
            os.makedirs(os.path.join(root, sub))
        if agent:
            _add_agent(kit, root)
            workload = AGENT + workload
        shutil.copy(kit['busybox'], os.path.join(root, 'bin/busybox'))
        for mod in MODULES:
            shutil.copy(os.path.join(kit['dir'], mod + '.ko'),
                        os.path.join(root, 'lib/modules'))
        with open(os.path.join(root, 'init'), 'w') as f:
            f.write(INIT % {'modules': ' '.join(MODULES),
                            'workload': workload})
        os.chmod(os.path.join(root, 'init'), 0o755)
        with open(os.path.join(root, 'boot.bin'), 'wb') as f:
            f.write(boot_data)
        names = _run('find', '.', cwd=root)
        with open(dest, 'wb') as out:
            subprocess.run([kit['busybox'], 'cpio', '-o', '-H', 'newc'],
                           input=names.encode(), cwd=root, stdout=out,
                           stderr=subprocess.DEVNULL, check=True)
    finally:
        shutil.rmtree(root)


def make_disk(workdir: str, base_data: bytes, disk_format: str = 'qcow2',
              size_mb: int = 64, backing: bool = True) -> dict:
    """An ext4 disk holding base.bin; qcow2 over a qcow2 backing file."""
    tree = tempfile.mkdtemp()
    try:
        with open(os.path.join(tree, 'base.bin'), 'wb') as f:
            f.write(base_data)
        raw = os.path.join(workdir, 'base.raw')
        _run('truncate', '-s', '%dM' % size_mb, raw)
        _run('mkfs.ext4', '-q', '-F', '-d', tree, raw)
    finally:
        shutil.rmtree(tree)
    if disk_format == 'raw':
        return {'path': raw, 'format': 'raw', 'backing': None}
    if not backing:
        path = os.path.join(workdir, 'disk.qcow2')
        _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, path)
        os.unlink(raw)
        return {'path': path, 'format': 'qcow2', 'backing': None}
    base = os.path.join(workdir, 'base.qcow2')
    _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, base)
    os.unlink(raw)
    path = os.path.join(workdir, 'disk.qcow2')
    _run('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base,
         '-F', 'qcow2', path)
    return {'path': path, 'format': 'qcow2', 'backing': base}


class TestGuest:
    """One defined (persistent) test domain and the files behind it."""

    __test__ = False  # not a pytest test class

    def __init__(self, conn: libvirt.virConnect, workdir: str,
                 disk_format: str = 'qcow2', backing: bool = True,
                 name: Optional[str] = None,
                 disk: Optional[dict] = None, agent: bool = False,
                 second_disk: bool = False, period: float = 0.5,
                 cache: Optional[str] = None, memory_mib: int = 192,
                 fill_mib: int = 0, owner: Optional[str] = None) -> None:
        """A guest that writes to an ext4 disk of its own.

        :param disk: use this prebuilt disk (``path``, ``format``) instead;
            the guest then leaves it untouched.
        :param agent: run qemu-guest-agent on a virtio-serial channel.
        :param second_disk: give the guest a second ext4 disk (vdb), where
            it writes the same counter as on the first.
        :param period: seconds between two counter values.
        :param cache: the first disk's cache mode (QEMU's default if None).
        :param memory_mib: the guest's RAM.
        :param fill_mib: MiB of its RAM to fill with random data before it
            says it is ready.
        :param owner: a project id, written as Nova's owner metadata.
        """
        self.conn = conn
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        # QEMU runs as libvirt-qemu: it must be able to reach the files.
        os.chmod(workdir, 0o755)
        self.uuid = str(uuidlib.uuid4())
        self.name = name or 'vmsnap-test-' + self.uuid[:8]
        self.boot_data = os.urandom(BOOT_FILE_SIZE)
        self.base_data = os.urandom(BASE_FILE_SIZE)
        kit = guest_kit()
        self.initrd = os.path.join(workdir, 'initrd.img')
        workload = (WRITER % {'period': period} if disk is None
                    else IDLE)
        if fill_mib:
            workload = FILL % {'mib': fill_mib} + workload
        build_initramfs(kit, self.initrd, self.boot_data, workload,
                        agent=agent)
        self.disk = disk or make_disk(workdir, self.base_data, disk_format,
                                      backing=backing)
        self.console = os.path.join(workdir, 'console.log')
        self.second_disk = None
        if second_disk:
            os.makedirs(os.path.join(workdir, 'vdb'), mode=0o755)
            self.second_disk = make_disk(os.path.join(workdir, 'vdb'),
                                         b'', 'qcow2', size_mb=32,
                                         backing=False)
        xml = DOMAIN_XML % {
            'name': saxutils.escape(self.name), 'uuid': self.uuid,
            'kernel': kit['kernel'], 'initrd': self.initrd,
            'disk': self.disk['path'], 'disk_format': self.disk['format'],
            'cache': " cache='%s'" % cache if cache else '',
            'console': self.console, 'memory_mib': memory_mib,
            'cmdline': CMDLINE,
            'metadata': NOVA_OWNER % {'user': '0' * 32, 'project': owner}
            if owner else '',
            'channel': AGENT_CHANNEL if agent else '',
            'second_disk': (SECOND_DISK % self.second_disk['path']
                            if second_disk else '')}
        self.dom = conn.defineXML(xml)

    # -- lifecycle -------------------------------------------------------
    def start(self, wait_ready: bool = True, timeout: float = 120) -> None:
        self.dom.create()
        if wait_ready:
            self.wait_for('VMSNAP-READY', timeout)
            self.wait_counter_above(0, timeout)

    def destroy(self) -> None:
        """Remove the domain, its managed save and its files."""
        try:
            if self.dom.isActive():
                self.dom.destroy()
            if self.dom.hasManagedSaveImage(0):
                self.dom.managedSaveRemove(0)
            self.dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self) -> int:
        return self.dom.state()[0]

    # -- console ---------------------------------------------------------
    def console_text(self) -> str:
        try:
            with open(self.console, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def wait_for(self, marker: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.console_text():
            if time.monotonic() > deadline or not self.dom.isActive():
                raise AssertionError(
                    'guest %s did not print %r within %ss; console:\n%s'
                    % (self.name, marker, timeout,
                       self.console_text()[-2000:]))
            time.sleep(0.2)

    def counters(self) -> list:
        return counters_in(self.console_text())

    def resumed_counter(self, offset: int, timeout: float = 30) -> int:
        """The first counter printed after going back in time.

        ``offset`` is where the console stood before a revert: the guest
        counts on while the revert stages its disks, then a guest resumed
        from an earlier memory state prints a lower value.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            values = counters_in(self.console_text()[offset:])
            for previous, value in zip(values, values[1:]):
                if value < previous:
                    return value
            time.sleep(0.2)
        raise AssertionError('the counter never went back: %s'
                             % self.console_text()[offset:][-500:])

    def last_counter(self) -> int:
        values = self.counters()
        return values[-1] if values else 0

    def wait_counter_above(self, value: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.last_counter() <= value:
            if time.monotonic() > deadline:
                raise AssertionError(
                    'guest %s counter stuck at %s; console tail:\n%s'
                    % (self.name, self.last_counter(),
                       self.console_text()[-1000:]))
            time.sleep(0.1)
        return self.last_counter()

    def boots(self) -> int:
        return len(re.findall(r'VMSNAP-BOOT ', self.console_text()))

    def inactive_xml(self) -> str:
        return self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    # -- the guest agent -------------------------------------------------
    def _agent(self, command: str, timeout: int = 10, **arguments) -> dict:
        answer = libvirt_qemu.qemuAgentCommand(
            self.dom, json.dumps({'execute': command,
                                  'arguments': arguments}), timeout, 0)
        return json.loads(answer)['return']

    def start_command(self, script: str) -> int:
        """Start a shell script inside the guest; its pid, no waiting."""
        return self._agent('guest-exec', path='/bin/sh',
                           arg=['-c', script])['pid']

    def run(self, script: str, timeout: float = 60) -> tuple:
        """Run a shell script inside the guest: (exit code, stdout)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid = self._agent('guest-exec', path='/bin/sh',
                                  arg=['-c', script],
                                  **{'capture-output': True})['pid']
                break
            except libvirt.libvirtError:
                # The agent answers again a moment after a restore.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while True:
            status = self._agent('guest-exec-status', pid=pid)
            if status['exited']:
                return status.get('exitcode'), base64.b64decode(
                    status.get('out-data', '')).decode(errors='replace')
            if time.monotonic() > deadline:
                raise AssertionError('guest command did not end: %s'
                                     % script)
            time.sleep(0.1)


def counters_in(console: str) -> list:
    """The counter values a console text shows, in order."""
    return [int(n) for n in re.findall(r'VMSNAP-COUNTER (\d+)\r?\n', console)]


def read_ext4_files(image: str, image_format: str, names: list,
                    workdir: str) -> dict:
    """Recover the filesystem on a copy of the image and read files from it.

    A live copy of a mounted ext4 has a journal to replay, as after a power
    cut: e2fsck replays it, then a second, read-only e2fsck must find the
    filesystem clean.  Returns the files' bytes and both e2fsck outputs.
    """
    raw = os.path.join(workdir, 'check.raw')
    _run('qemu-img', 'convert', '-f', image_format, '-O', 'raw', image, raw)
    try:
        repair = subprocess.run(['e2fsck', '-fy', raw], capture_output=True,
                                text=True)
        check = subprocess.run(['e2fsck', '-fn', raw], capture_output=True,
                               text=True)
        files = {}
        for name in names:
            out = os.path.join(workdir, 'extract-' + name)
            subprocess.run(['debugfs', '-R', 'dump /%s %s' % (name, out),
                            raw], check=True, capture_output=True)
            with open(out, 'rb') as f:
                files[name] = f.read()
            os.unlink(out)
    finally:
        os.unlink(raw)
    return {'files': files, 'repair': repair, 'check': check}
