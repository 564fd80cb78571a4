"""Memory snapshots and revert, driven by the real ``openstack`` client.

Real libvirtd, TCG guests with the guest agent, the local Glance.  What a
revert did is proven from inside the guest (``guest-exec``): the file it
wrote after the snapshot is gone, and its counter continues from the
snapshot's value without a boot (memory) or restarts after one (no
memory).  Refused and failed reverts leave the guest running as it was.
"""

import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import glanceclient
import libvirt
import pytest

from tests.functional import checks
from tests.functional import testguest
from vmsnap_driver import digest
from vmsnap_driver import exception

BIN = os.path.dirname(sys.executable)
MARKER = '/mnt/after-snapshot.txt'


@pytest.fixture
def agent_guest(make_guest):
    guest = make_guest(agent=True)
    guest.start()
    return guest


def _snapshot(svc, guest, name, *properties):
    before = guest.last_counter()
    image_id = svc.create_image(guest, name, *properties)
    return image_id, (before, guest.last_counter())


def _write_marker(guest):
    code, _out = guest.run('echo later > %s && sync' % MARKER)
    assert code == 0
    assert guest.run('cat %s' % MARKER) == (0, 'later\n')


def _no_leftovers(svc, guest):
    directory = os.path.dirname(guest.disk['path'])
    assert not glob.glob(os.path.join(directory, '*.vmsnap-*'))
    operations = os.path.join(svc.dir, 'operations')
    assert not os.listdir(operations) if os.path.isdir(operations) else True
    snapshots = os.path.join(svc.dir, 'snapshots')
    assert not os.listdir(snapshots) if os.path.isdir(snapshots) else True


def _show(svc, guest):
    return json.loads(svc.openstack('server', 'show', guest.name,
                                    '-f', 'json').stdout)


def test_memory_snapshot_then_rebuild_resumes_at_the_snapshot(
        service, agent_guest, glance):
    svc = service()
    guest = agent_guest
    xml = guest.inactive_xml()
    image_id, (before, after) = _snapshot(svc, guest, 'with-memory',
                                          'vmsnap_memory=true')
    image = glance.images.get(image_id)
    assert image['vmsnap_consistency'] == 'memory'
    assert float(image['vmsnap_pause_seconds']) < 0.5
    memory = glance.images.get(image['vmsnap_memory_image'])
    assert memory['os_hidden'] is True
    assert memory['container_format'] == 'compressed'
    assert memory['vmsnap_memory_of'] == image_id
    assert memory['vmsnap_memory_sha256'] == image['vmsnap_memory_sha256']
    assert memory['vmsnap_memory_mib'] == '192'
    # Hidden: not in the default listing.
    assert memory['id'] not in [i['id'] for i in glance.images.list()]

    _write_marker(guest)
    ahead = guest.wait_counter_above(after + 4)
    offset = len(guest.console_text())
    svc.openstack('server', 'rebuild', guest.name, '--image', image_id,
                  '--wait')

    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == 1, 'the guest booted instead of resuming'
    first = guest.resumed_counter(offset)
    # It continues from where it was at the snapshot, not from 'ahead'.
    assert before <= first <= after + 1 < ahead, (before, first, after,
                                                  ahead)
    code, _out = guest.run('test -e %s' % MARKER)
    assert code == 1, 'a file written after the snapshot is still there'
    assert guest.inactive_xml() == xml
    shown = _show(svc, guest)
    assert (shown['status'], shown['OS-EXT-STS:task_state']) == (
        'ACTIVE', None)
    _no_leftovers(svc, guest)
    glance.images.delete(memory['id'])
    glance.images.delete(image_id)


def test_rebuild_without_memory_boots_from_the_snapshot_disks(
        service, agent_guest, glance, workroot):
    """The snapshot is a compressed one: a guest boots from it too."""
    svc = service(libvirt={'snapshot_compression': True,
                           'snapshot_compression_type': 'zstd'})
    guest = agent_guest
    xml = guest.inactive_xml()
    backing = guest.disk['backing']
    image_id, _window = _snapshot(svc, guest, 'disk-only')
    assert 'vmsnap_memory_image' not in glance.images.get(image_id)
    stored = checks.download(glance, image_id,
                             os.path.join(workroot, image_id + '.qcow2'))
    check = json.loads(subprocess.run(
        ['qemu-img', 'check', '--output=json', stored], check=True,
        capture_output=True, text=True).stdout)
    assert check['compressed-clusters'] > 0
    os.unlink(stored)
    _write_marker(guest)
    svc.rebuild(guest, image_id)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    deadline = time.monotonic() + 120
    while guest.console_text().count('VMSNAP-READY') < 2:
        assert time.monotonic() < deadline, guest.console_text()[-1000:]
        time.sleep(0.2)
    assert guest.boots() == 2
    code, _out = guest.run('test -e %s' % MARKER)
    assert code == 1
    # Still an overlay on the same backing file, same path and format.
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '--output=json', guest.disk['path']],
        check=True, capture_output=True, text=True).stdout)
    assert info['format'] == 'qcow2'
    assert info['full-backing-filename'] == backing
    assert guest.inactive_xml() == xml
    _no_leftovers(svc, guest)
    glance.images.delete(image_id)


def test_revert_of_a_shut_off_guest_puts_back_the_snapshot_bytes(
        service, agent_guest, glance):
    svc = service()
    guest = agent_guest
    image_id, _window = _snapshot(svc, guest, 'bytes')
    _write_marker(guest)
    guest.dom.destroy()
    result = subprocess.run(
        [os.path.join(BIN, 'vmsnap'), '--config-file', svc.config,
         'revert', guest.name, image_id, '--no-progress', '-f', 'json'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        'server': guest.name, 'id': guest.uuid, 'image': image_id,
        'state': 'shutoff', 'how': 'left off'}
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    actual = digest.of_file(guest.disk['path'], 'qcow2')
    assert actual == glance.images.get(image_id)['vmsnap_content_sha256']
    _no_leftovers(svc, guest)
    glance.images.delete(image_id)


def test_refused_and_failed_reverts_leave_the_guest_running(
        service, agent_guest, glance, make_guest):
    svc = service()
    guest = agent_guest
    xml = guest.inactive_xml()
    image_id, _window = _snapshot(svc, guest, 'guarded',
                                  'vmsnap_memory=true')
    memory_id = glance.images.get(image_id)['vmsnap_memory_image']
    _write_marker(guest)

    def refused(image, words):
        result = svc.openstack('server', 'rebuild', guest.name, '--image',
                               image, '--wait', check=False)
        assert result.returncode != 0
        assert words in result.stderr, result.stderr
        return result

    # Not an image of this server, or not a disk snapshot: 400, untouched.
    other = make_guest()
    foreign = glance.images.create(name='foreign', disk_format='raw',
                                   container_format='bare',
                                   instance_uuid=other.uuid)
    glance.images.upload(foreign['id'], io.BytesIO(b'\0' * 512))
    refused(foreign['id'], 'not a snapshot of this server')
    refused(memory_id, 'is the memory state of snapshot')
    # A memory state its owner altered (its recorded sha256, as if the
    # bytes were swapped, or the machine it fits) never reaches QEMU: its
    # seal fails, before anything is downloaded.
    sha_was = glance.images.get(memory_id)['vmsnap_memory_sha256']
    for edit, back in (({'vmsnap_memory_sha256': '1' * 64},
                        {'vmsnap_memory_sha256': sha_was}),
                       ({'vmsnap_memory_mib': '4096'},
                        {'vmsnap_memory_mib': '192'})):
        glance.images.update(memory_id, **edit)
        refused(image_id, 'is not sealed by this deployment')
        glance.images.update(memory_id, **back)
    assert guest.boots() == 1 and guest.run('test -e %s' % MARKER)[0] == 0

    # A snapshot whose disk is not what its record says: staged, found
    # wrong, never swapped in.  The server shows ERROR with the fault,
    # as Nova shows a failed rebuild; the guest runs on untouched.
    digest_was = glance.images.get(image_id)['vmsnap_content_sha256']
    glance.images.update(image_id, vmsnap_content_sha256='0' * 64)
    result = svc.openstack('server', 'rebuild', guest.name, '--image',
                           image_id, '--wait', check=False)
    assert result.returncode != 0
    shown = _show(svc, guest)
    assert shown['status'] == 'ERROR'
    assert 'ImageCorrupt' in shown['fault']['message']
    assert 'content sha256' in shown['fault']['message']
    counter = guest.last_counter()
    guest.wait_counter_above(counter)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == 1
    assert guest.run('test -e %s' % MARKER)[0] == 0
    assert guest.inactive_xml() == xml
    _no_leftovers(svc, guest)

    # Put right, the same rebuild goes through and clears the error.
    glance.images.update(image_id, vmsnap_content_sha256=digest_was)
    svc.rebuild(guest, image_id)
    assert _show(svc, guest)['status'] == 'ACTIVE'
    assert guest.run('test -e %s' % MARKER)[0] == 1
    for each in (foreign['id'], memory_id, image_id):
        glance.images.delete(each)


def test_revert_refused_for_lack_of_room_touches_nothing(
        conf, load_driver, conn, workroot, guest_kit, glance, queued_image):
    # The guest's disks live on a small filesystem: the staged disk would
    # not fit beside them.
    small = tempfile.mkdtemp(dir=workroot, prefix='small-')
    os.chmod(small, 0o755)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=48M,mode=0755',
                    'tmpfs', small], check=True)
    try:
        guest = testguest.TestGuest(conn, os.path.join(small, 'guest'))
        try:
            guest.start()
            driver = load_driver()
            image_id = queued_image()
            driver.snapshot(None, checks.Instance(guest), image_id)
            counter = guest.last_counter()
            with pytest.raises(exception.InsufficientSpace):
                driver.revert(None, checks.Instance(guest), image_id)
            assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
            assert guest.boots() == 1
            assert guest.wait_counter_above(counter) > counter
            assert not glob.glob(os.path.join(small, 'guest', '*.vmsnap-*'))
            assert os.listdir(os.path.join(conf.state_path,
                                           'operations')) == []
        finally:
            guest.destroy()
    finally:
        subprocess.run(['umount', small], check=False)


def test_glance_unreachable_for_revert_leaves_the_guest_running(
        conf, load_driver, make_guest, private_glance):
    gone = private_glance('revert', 9696)
    conf.set_override('endpoint_override', gone.url, group='glance')
    # One retry (1 s) shows it gives up; the default 3 would wait 7 s.
    conf.set_override('num_retries', 1, group='glance')
    glance = glanceclient.Client('2', endpoint=gone.url)
    guest = make_guest(agent=True)
    guest.start()
    driver = load_driver()
    image = glance.images.create(name='revert, then no Glance',
                                 vmsnap_memory='true')
    driver.snapshot(None, checks.Instance(guest), image['id'])
    _write_marker(guest)
    # Glance goes away between the snapshot and the revert.
    gone.stop()
    with pytest.raises(exception.VmsnapException):
        driver.revert(None, checks.Instance(guest), image['id'])
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == 1
    assert guest.run('test -e %s' % MARKER)[0] == 0
    assert not glob.glob(os.path.join(
        os.path.dirname(guest.disk['path']), '*.vmsnap-*'))
    assert os.listdir(os.path.join(conf.state_path, 'operations')) == []


def test_snapshot_of_a_shut_off_guest_reverts_to_shut_off(
        service, agent_guest, glance):
    svc = service()
    guest = agent_guest
    guest.dom.destroy()
    image_id, _window = _snapshot(svc, guest, 'while off')
    assert glance.images.get(image_id)['vmsnap_guest_state'] == 'shutoff'
    guest.dom.create()
    guest.wait_counter_above(guest.last_counter())
    result = subprocess.run(
        [os.path.join(BIN, 'vmsnap'), '--config-file', svc.config,
         'revert', guest.name, image_id, '--no-progress'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    assert digest.of_file(guest.disk['path'], 'qcow2') == (
        glance.images.get(image_id)['vmsnap_content_sha256'])
    _no_leftovers(svc, guest)
    glance.images.delete(image_id)
