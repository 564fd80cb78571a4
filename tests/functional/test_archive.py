"""Export and import of a snapshot as one OVA, on real parts.

A running TCG guest with two disks and its agent is snapshot with its
memory through the real ``openstack`` client; the snapshot is exported;
the guest, its disks and its images are destroyed; the import defines and
starts it again: it continues from the snapshot's counter without booting,
and a file it wrote after the snapshot is not there.  Bad archives are
refused, naming the member, with nothing left in Glance or on the host.
"""

import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid as uuidlib
from xml.etree import ElementTree

import libvirt
import pytest

from tests.functional import testguest
from vmsnap_driver import digest
from vmsnap_driver import domain_record
from vmsnap_driver import ova

BIN = os.path.dirname(sys.executable)
MARKER = '/mnt/after-snapshot.txt'
OVF = '{%s}' % ova.OVF


def _vmsnap(svc, *args):
    return subprocess.run([os.path.join(BIN, 'vmsnap'), '--config-file',
                           svc.config] + list(args) + ['--no-progress'],
                          capture_output=True, text=True, timeout=600)


def _all_images(glance):
    return {i['id'] for i in glance.images.list(filters={'os_hidden': True})
            } | {i['id'] for i in glance.images.list()}


def _imported(svc, *args):
    """``vmsnap import -f json``: the run, and each row by its 'what'."""
    done = _vmsnap(svc, 'import', *args, '-f', 'json')
    rows = json.loads(done.stdout) if done.returncode == 0 else []
    return done, {row['what']: row for row in rows}


def _members(path, dest):
    with tarfile.open(path) as tar:
        names = tar.getnames()
        tar.extractall(dest)
    return names


def test_export_then_import_brings_the_guest_back_where_it_was(
        service, make_guest, glance, workroot, conn):
    svc = service(libvirt={'snapshot_disks': 'all'})
    guest = make_guest(agent=True, second_disk=True)
    guest.start()
    xml = guest.inactive_xml()
    before = guest.last_counter()
    image = glance.images.get(svc.create_image(guest, 'to-export',
                                               'vmsnap_memory=true'))
    after = guest.last_counter()
    vdb = glance.images.get(image['vmsnap_group_images'].split('=')[1])
    memory = glance.images.get(image['vmsnap_memory_image'])
    old = [image['id'], vdb['id'], memory['id']]
    assert domain_record.read(image) == xml
    code, _out = guest.run('echo later > %s && sync' % MARKER)
    assert code == 0
    ahead = guest.wait_counter_above(after + 4)

    archive = os.path.join(workroot, 'snapshot-%s.ova' % guest.uuid[:8])
    # By its name, as the openstack client takes one.
    done = _vmsnap(svc, 'export', 'to-export', '--output', archive)
    assert done.returncode == 0, done.stderr
    # What any OVF tool finds: a descriptor first, plain qcow2 disks of
    # the snapshot's bytes, every member in the manifest, which is last.
    unpacked = os.path.join(workroot, 'unpacked-' + guest.uuid[:8])
    names = _members(archive, unpacked)
    assert names[0].endswith('.ovf') and names[-1].endswith('.mf')
    assert set(names) == {names[0], 'disk-vda.qcow2', 'disk-vdb.qcow2',
                          ova.MEMORY, ova.DOMAIN_XML, ova.RECORD,
                          names[-1]}
    root = ElementTree.parse(os.path.join(unpacked, names[0])).getroot()
    assert root.tag == OVF + 'Envelope'
    hrefs = {f.get(OVF + 'href') for f in root.iter(OVF + 'File')}
    assert hrefs == set(names[1:-1])
    capacities = {d.get(OVF + 'diskId'): int(d.get(OVF + 'capacity'))
                  for d in root.iter(OVF + 'Disk')}
    for target, source in (('vda', image), ('vdb', vdb)):
        path = os.path.join(unpacked, 'disk-%s.qcow2' % target)
        info = json.loads(subprocess.run(
            ['qemu-img', 'info', '--output=json', path], check=True,
            capture_output=True, text=True).stdout)
        assert info['format'] == 'qcow2'
        assert 'backing-filename' not in info
        assert capacities[target] == info['virtual-size']
        assert digest.of_file(path, 'qcow2') == source[
            'vmsnap_content_sha256']
    with open(os.path.join(unpacked, names[-1])) as f:
        listed = ova.parse_manifest(f.read().encode())
    assert set(listed) == set(names[:-1])
    shutil.rmtree(unpacked)

    # The guest, its disks and its images are gone.
    console = len(guest.console_text())
    guest.dom.destroy()
    guest.dom.undefine()
    for path in (guest.disk['path'], guest.disk['backing'],
                 guest.second_disk['path']):
        os.unlink(path)
    for image_id in old:
        glance.images.delete(image_id)

    disk_dir = os.path.join(guest.workdir, 'imported')
    done, printed = _imported(svc, archive, '--define', '--disk-dir',
                              disk_dir, '--start')
    assert done.returncode == 0, done.stderr
    assert 'resumed from its memory state' in printed['domain']['detail']
    guest.dom = conn.lookupByUUIDString(guest.uuid)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    deadline = time.monotonic() + 30
    while not testguest.counters_in(guest.console_text()[console:]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    since = guest.console_text()[console:]
    assert 'VMSNAP-BOOT' not in since, 'the guest booted instead of resuming'
    first = testguest.counters_in(since)[0]
    assert before <= first <= after + 1 < ahead, (before, first, after,
                                                  ahead)
    code, _out = guest.run('test -e %s' % MARKER)
    assert code == 1, 'a file written after the snapshot is there'
    assert sorted(os.listdir(disk_dir)) == ['%s-vda.qcow2' % guest.name,
                                            '%s-vdb.qcow2' % guest.name]

    # The images are back, linked to each other under their new ids, and
    # the snapshot is one the server can be rebuilt onto.
    new = {key: glance.images.get(printed[key]['id'])
           for key in ('vda', 'vdb', 'memory')}
    assert new['vda']['vmsnap_memory_image'] == new['memory']['id']
    assert new['memory']['vmsnap_memory_of'] == new['vda']['id']
    assert new['vda']['vmsnap_group_images'] == 'vdb=%s' % new['vdb']['id']
    assert new['vda']['vmsnap_imported_from'] == image['id']
    assert new['memory']['os_hidden'] is True
    assert {i['instance_uuid'] for i in new.values()} == {guest.uuid}
    code, _out = guest.run('echo again > %s && sync' % MARKER)
    assert code == 0
    svc.rebuild(guest, new['vda']['id'])
    code, _out = guest.run('test -e %s' % MARKER)
    assert code == 1
    assert not os.listdir(os.path.join(svc.dir, 'operations'))
    for each in new.values():
        glance.images.delete(each['id'])

    # Not over a domain of that name or UUID; beside it under a new name
    # and UUID, where its memory state cannot resume (libvirt refuses a
    # UUID the guest did not have), defined to boot.
    copy_dir = os.path.join(guest.workdir, 'copy')
    name = guest.name + '-copy'
    for args, refusal in (([], 'is defined here already'),
                          (['--name', name, '--start'],
                           'resumes only in the domain UUID')):
        done = _vmsnap(svc, 'import', archive, '--define', '--disk-dir',
                       copy_dir, *args)
        assert done.returncode == 1
        assert refusal in done.stderr
        assert not os.path.exists(copy_dir)
    done, printed = _imported(svc, archive, '--define', '--disk-dir',
                              copy_dir, '--name', name)
    assert done.returncode == 0, done.stderr
    copy = conn.lookupByName(name)
    try:
        assert copy.UUIDString() != guest.uuid
        assert copy.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert glance.images.get(printed['vda']['id'])[
            'instance_uuid'] == copy.UUIDString()
    finally:
        copy.undefine()
        for key in ('vda', 'vdb', 'memory'):
            glance.images.delete(printed[key]['id'])

    # A snapshot without memory, imported with --start, boots.
    disk_only = svc.create_image(guest, 'disk-only')
    archive = os.path.join(workroot, 'disk-only-%s.ova' % guest.uuid[:8])
    done = _vmsnap(svc, 'export', disk_only, '--output', archive)
    assert done.returncode == 0, done.stderr
    glance.images.delete(glance.images.get(disk_only)[
        'vmsnap_group_images'].split('=')[1])
    glance.images.delete(disk_only)
    # Its console log file is the original's: only one QEMU may hold it.
    guest.dom.destroy()
    name = guest.name + '-booted'
    done, printed = _imported(svc, archive, '--define', '--disk-dir',
                              os.path.join(guest.workdir, 'booted'),
                              '--name', name, '--start')
    assert done.returncode == 0, done.stderr
    booted = conn.lookupByName(name)
    try:
        assert printed['domain']['detail'].endswith(': running')
        assert booted.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        booted.destroy()
        booted.undefine()
        for key in ('vda', 'vdb'):
            glance.images.delete(printed[key]['id'])


# -- bad archives -----------------------------------------------------------

DOMAIN = """<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%(kernel)s</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/nowhere/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>%(extra)s
    <serial type='file'><source path='%(console)s'/>
      <target port='0'/></serial>
  </devices>
</domain>"""


def _rewrite(source, dest, replace=None, add=None, manifest=True):
    """A copy of an OVA with members replaced or added; a new manifest."""
    replace = replace or {}
    with tarfile.open(source) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    members = [(n, replace.get(n, d)) for n, d in members]
    members[-1:-1] = list((add or {}).items())
    if manifest:
        members[-1] = (members[-1][0], ''.join(
            'SHA256(%s)= %s\n' % (n, hashlib.sha256(d).hexdigest())
            for n, d in members[:-1]).encode())
    with tarfile.open(dest, 'w', format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture
def small_snapshot(glance, workroot):
    yield from _vmsnap_looking_snapshot(glance, workroot, 4)


@pytest.fixture
def larger_snapshot(glance, workroot):
    yield from _vmsnap_looking_snapshot(glance, workroot, 128)


def _vmsnap_looking_snapshot(glance, workroot, data_mib):
    """A vmsnap-looking full snapshot in Glance, with a domain XML."""
    made = []
    work = os.path.join(workroot, 'small-' + uuidlib.uuid4().hex[:8])
    os.makedirs(work)
    raw = os.path.join(work, 'disk.raw')
    with open(raw, 'wb') as f:
        for _ in range(data_mib // 4):
            f.write(os.urandom(4 * 1024 * 1024))
        f.truncate(max(32, data_mib) * 1024 * 1024)
    disk = os.path.join(work, 'disk.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    disk], check=True)
    kernel = os.path.join(work, 'vmlinuz')
    open(kernel, 'wb').close()
    name = 'archived-' + uuidlib.uuid4().hex[:8]
    xml = DOMAIN % {'name': name, 'uuid': str(uuidlib.uuid4()),
                    'kernel': kernel, 'extra': '',
                    'console': os.path.join(work, 'console.log')}
    image = glance.images.create(name='small', disk_format='qcow2',
                                 container_format='bare')
    made.append(image['id'])
    glance.images.update(image['id'], vmsnap_source_disk='vda',
                         instance_uuid=str(uuidlib.uuid4()),
                         vmsnap_content_sha256=digest.of_file(disk, 'qcow2'),
                         **domain_record.properties(xml))
    with open(disk, 'rb') as f:
        glance.images.upload(image['id'], f)
    yield {'id': image['id'], 'work': work, 'xml': xml, 'name': name,
           'kernel': kernel, 'made': made}
    for image_id in made:
        glance.images.delete(image_id)
    shutil.rmtree(work, ignore_errors=True)


def test_bad_archives_are_refused_leaving_nothing(
        service, glance, small_snapshot, conn):
    svc = service()
    work = small_snapshot['work']
    good = os.path.join(work, 'good.ova')
    done = _vmsnap(svc, 'export', small_snapshot['id'], '--output', good)
    assert done.returncode == 0, done.stderr
    with tarfile.open(good) as tar:
        names = tar.getnames()
        descriptor = tar.extractfile(names[0]).read()
    disk_dir = os.path.join(work, 'disks')

    # Written to standard output, it is the same archive (logs go to
    # standard error), and it imports as images.
    streamed = subprocess.run(
        [os.path.join(BIN, 'vmsnap'), '--config-file', svc.config,
         'export', small_snapshot['id'], '--output', '-', '--no-progress'],
        capture_output=True, timeout=600)
    assert streamed.returncode == 0, streamed.stderr
    piped = os.path.join(work, 'piped.ova')
    with open(piped, 'wb') as f:
        f.write(streamed.stdout)
    with tarfile.open(piped) as tar:
        assert tar.getnames() == names
    done, printed = _imported(svc, piped)
    assert done.returncode == 0, done.stderr
    imported = glance.images.get(printed['vda']['id'])
    small_snapshot['made'].append(imported['id'])
    assert imported['vmsnap_imported_from'] == small_snapshot['id']
    assert domain_record.read(imported) == small_snapshot['xml']

    with open(good, 'rb') as f:
        whole = f.read()
    truncated = os.path.join(work, 'truncated.ova')
    with open(truncated, 'wb') as f:
        f.write(whole[:len(whole) // 2])
    flipped = bytearray(whole)
    offset = whole.index(b'QFI\xfb') + 70000
    flipped[offset] ^= 0xff
    corrupt = os.path.join(work, 'corrupt.ova')
    with open(corrupt, 'wb') as f:
        f.write(flipped)
    backed = os.path.join(work, 'backed.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-b',
                    '/etc/hostname', '-F', 'raw', backed, '32M'],
                   check=True)
    data_file = os.path.join(work, 'data-file.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                    'data_file=%s' % os.path.join(work, 'host.raw'),
                    data_file, '32M'], check=True)

    def domain(**kw):
        values = {'name': small_snapshot['name'], 'uuid': str(
            uuidlib.uuid4()), 'kernel': small_snapshot['kernel'],
            'extra': '', 'console': os.path.join(work, 'console.log')}
        values.update(kw)
        return (DOMAIN % values).encode()

    def read(path):
        with open(path, 'rb') as f:
            return f.read()
    cases = [
        (truncated, [], 'corrupt or truncated'),
        (corrupt, [], 'disk-vda.qcow2: its sha256'),
        (_rewrite(good, os.path.join(work, 'extra.ova'),
                  add={'extra.bin': b'x'}, manifest=False), [],
         'extra.bin: it is not in the manifest'),
        (_rewrite(good, os.path.join(work, 'escape.ova'), replace={
            names[0]: descriptor.replace(b'href="disk-vda.qcow2"',
                                         b'href="../../etc/passwd"')}), [],
         "'../../etc/passwd'"),
        (_rewrite(good, os.path.join(work, 'backed.ova'),
                  replace={'disk-vda.qcow2': read(backed)}), [],
         'disk-vda.qcow2: it fails the safety checks'),
        (_rewrite(good, os.path.join(work, 'data-file.ova'),
                  replace={'disk-vda.qcow2': read(data_file)}), [],
         'disk-vda.qcow2: it fails the safety checks'),
        (_rewrite(good, os.path.join(work, 'host-disk.ova'), replace={
            ova.DOMAIN_XML: domain(extra="""
    <disk type='block' device='disk'><source dev='/dev/sda'/>
      <target dev='vdb' bus='virtio'/></disk>""")}),
         ['--define', '--disk-dir', disk_dir],
         'domain.xml: it has disk vdb (dev=/dev/sda)'),
        (_rewrite(good, os.path.join(work, 'no-kernel.ova'), replace={
            ova.DOMAIN_XML: domain(kernel='/nonexistent/vmlinuz')}),
         ['--define', '--disk-dir', disk_dir],
         '<os><kernel> names /nonexistent/vmlinuz'),
    ]
    images_before = _all_images(glance)
    for path, args, expected in cases:
        done = _vmsnap(svc, 'import', path, *args)
        assert done.returncode == 1, (path, done.stdout)
        assert expected in done.stderr, (path, done.stderr)
        assert _all_images(glance) == images_before, path
        assert not os.path.exists(disk_dir), path
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(small_snapshot['name'])
        assert not os.listdir(os.path.join(svc.dir, 'operations'))
    assert not glob.glob(os.path.join(svc.dir, 'snapshots', '*'))


def test_an_import_killed_midway_is_undone_by_recovery(
        service, glance, larger_snapshot, conn):
    svc = service()
    work = larger_snapshot['work']
    archive = os.path.join(work, 'larger.ova')
    done = _vmsnap(svc, 'export', larger_snapshot['id'], '--output',
                   archive)
    assert done.returncode == 0, done.stderr
    images_before = _all_images(glance)
    disk_dir = os.path.join(work, 'disks')
    operations = os.path.join(svc.dir, 'operations')
    proc = subprocess.Popen(
        [os.path.join(BIN, 'vmsnap'), '--config-file', svc.config, 'import',
         archive, '--define', '--disk-dir', disk_dir, '--no-progress'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once its record says it has created an image.
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, 'the import ended before it was killed'
        assert time.monotonic() < deadline
        records = [json.load(open(os.path.join(operations, name)))
                   for name in (os.listdir(operations)
                                if os.path.isdir(operations) else [])
                   if name.endswith('.json')]
        if records and records[0].get('images'):
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert _all_images(glance) != images_before
    done = subprocess.run([os.path.join(BIN, 'vmsnap'), '--config-file',
                           svc.config, 'recover'], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'import' in done.stdout
    assert _all_images(glance) == images_before
    assert not os.path.exists(disk_dir)
    assert not os.listdir(operations)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(larger_snapshot['name'])
