"""vmsnap-compute killed mid-operation (SIGKILL, whole process group).

At its next start it must bring every guest back to the state it had,
without a reboot, and leave no job, scratch file, workspace or
half-written image behind.  Real libvirtd, real guests, the local Glance.
"""

import glob
import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time

import glanceclient
import libvirt
import pytest

from tests.functional import checks
from tests.functional import testguest

DISK_MIB = 384


@pytest.fixture
def big_guest(conn, workroot, guest_kit):
    """A running guest whose disk holds DISK_MIB of random data.

    Capturing it takes seconds, which leaves room to kill the service in
    the middle; the guest only counts on its console.
    """
    workdir = tempfile.mkdtemp(dir=workroot, prefix='guest-')
    os.chmod(workdir, 0o755)
    path = os.path.join(workdir, 'disk.raw')
    subprocess.run(['dd', 'if=/dev/urandom', 'of=' + path, 'bs=1M',
                    'count=%d' % DISK_MIB, 'status=none'], check=True)
    guest = testguest.TestGuest(conn, workdir,
                                disk={'path': path, 'format': 'raw'})
    guest.start()
    yield guest
    guest.destroy()


def _wait(condition, what, timeout=60, interval=0.02):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'never saw: ' + what
        time.sleep(interval)


def _backup_running(guest):
    try:
        guest.dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    return True


def _assert_recovered(svc, guest, glance, xml, image_id, boots=1):
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == boots, 'the guest was rebooted'
    guest.wait_counter_above(guest.last_counter())
    assert not guest.dom.hasManagedSaveImage(0)
    assert not _backup_running(guest)
    assert guest.inactive_xml() == xml
    assert os.listdir(os.path.join(svc.dir, 'operations')) == []
    assert glob.glob(os.path.join(svc.dir, 'snapshots', '*')) == []
    assert image_id not in [i['id'] for i in glance.images.list()]
    assert 'recovering' in svc.log_text()


def test_kill_during_cold_snapshot_restores_the_saved_guest(
        service, big_guest, glance):
    guest = big_guest
    svc = service(libvirt={'snapshot_mode': 'cold',
                           'use_backup_api': 'false'})
    xml = guest.inactive_xml()
    image_id = svc.start_snapshot(guest, 'killed')
    _wait(lambda: guest.dom.hasManagedSaveImage(0)
          and guest.state() == libvirt.VIR_DOMAIN_SHUTOFF,
          'the guest managed-saved')
    svc.kill()
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    svc.start()
    _assert_recovered(svc, guest, glance, xml, image_id)
    _status, _h, shown = svc.request('GET', '/v2.1/servers/' + guest.uuid)
    assert 'stopped during' in shown['server']['fault']['message']


def test_kill_during_live_upload_ends_the_backup_job(
        service, big_guest, glance):
    guest = big_guest
    svc = service(libvirt={'snapshot_mode': 'live'})
    xml = guest.inactive_xml()
    image_id = svc.start_snapshot(guest, 'killed')
    _wait(lambda: _backup_running(guest), 'the backup job')
    svc.kill()
    assert _backup_running(guest)
    svc.start()
    _assert_recovered(svc, guest, glance, xml, image_id)


def _restart_libvirtd():
    """As an operator's package upgrade does: QEMU and its jobs run on."""
    subprocess.run(['pkill', '-TERM', '-x', 'libvirtd'], check=True)
    _wait(lambda: subprocess.run(['pgrep', '-x', 'libvirtd'],
                                 capture_output=True).returncode,
          'libvirtd gone', interval=0.1)
    subprocess.run(['libvirtd', '-d'], check=True)
    _wait(lambda: subprocess.run(
        ['virsh', '-c', 'qemu:///system', 'version'],
        capture_output=True).returncode == 0, 'libvirtd answering',
        interval=0.2)


def test_libvirtd_restart_mid_snapshot_leaves_nothing(
        service, big_guest, glance, conn):
    """The snapshot completes exactly, or fails and is cleaned up.

    A restarted libvirtd keeps the backup job; vmsnap-compute's own
    connection is closed under it.  Whichever way the snapshot ends, the
    job ends with it and nothing of it is left.
    """
    guest = big_guest
    svc = service(DEFAULT={'recovery_interval': '2'},
                  libvirt={'snapshot_mode': 'live'})
    xml = guest.inactive_xml()
    image_id = svc.start_snapshot(guest, 'killed')
    _wait(lambda: _backup_running(guest), 'the backup job')
    _restart_libvirtd()
    guest.dom = conn.lookupByUUIDString(guest.uuid)
    _wait(lambda: svc.request('GET', '/v2.1/servers/' + guest.uuid)[2][
        'server']['OS-EXT-STS:task_state'] is None, 'the snapshot ended',
        timeout=120, interval=0.5)
    _wait(lambda: not os.listdir(os.path.join(svc.dir, 'operations')),
          'the record settled', timeout=30, interval=0.5)
    images = {i['id']: i for i in glance.images.list()}
    if image_id in images:
        assert images[image_id]['status'] == 'active'
        with open(guest.disk['path'], 'rb') as f:
            expected = hashlib.file_digest(f, 'sha256').hexdigest()
        assert images[image_id]['vmsnap_content_sha256'] == expected
        glance.images.delete(image_id)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == 1
    guest.wait_counter_above(guest.last_counter())
    assert not _backup_running(guest)
    assert guest.inactive_xml() == xml
    assert glob.glob(os.path.join(svc.dir, 'snapshots', '*')) == []


def test_kill_during_revert_swap_finishes_or_undoes_it(
        service, make_guest, glance):
    guest = make_guest(agent=True)
    guest.start()
    svc = service()
    xml = guest.inactive_xml()
    image_id = svc.start_snapshot(guest, 'revert-me', 'vmsnap_memory=true')
    _wait(lambda: glance.images.get(image_id).get(
        'vmsnap_memory_sha256'), 'the snapshot done', interval=0.5)
    assert guest.run('echo kept > /mnt/kept && sync')[0] == 0
    status, _h, body = svc.request(
        'POST', '/v2.1/servers/%s/action' % guest.uuid,
        {'rebuild': {'imageRef': image_id}})
    assert status == 202, body
    # The guest is saved just before its disks are swapped.
    _wait(lambda: guest.state() == libvirt.VIR_DOMAIN_SHUTOFF,
          'the guest saved for the swap', interval=0.005)
    svc.kill()
    svc.start()
    # libvirtd may have gone on with a call the dead process made: the
    # revert is then finished (the guest resumed from the snapshot), else
    # undone (the guest resumed as it was).  Never anything in between.
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert guest.boots() == 1
    code, out = guest.run('cat /mnt/kept')
    undone = code == 0
    assert out == ('kept\n' if undone else '')
    assert guest.wait_counter_above(guest.last_counter())
    assert guest.inactive_xml() == xml
    directory = os.path.dirname(guest.disk['path'])
    assert glob.glob(os.path.join(directory, '*.vmsnap-*')) == []
    assert os.listdir(os.path.join(svc.dir, 'operations')) == []
    memory_id = glance.images.get(image_id)['vmsnap_memory_image']
    for each in (memory_id, image_id):
        glance.images.delete(each)


def _snapshot_in_background(driver, guest, image_id):
    """Run a snapshot in a thread; its outcome lands in the dict."""
    outcome = {}

    def run():
        try:
            driver.snapshot(None, checks.Instance(guest), image_id)
        except Exception as e:
            outcome['error'] = e
        else:
            outcome['error'] = None
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _thawed(conf):
    directory = os.path.join(conf.state_path, 'operations')
    for name in os.listdir(directory):
        try:
            with open(os.path.join(directory, name)) as f:
                facts = json.load(f)
        except (OSError, ValueError):
            continue
        if facts.get('backup_socket') and not facts.get('frozen'):
            return True
    return False


def _assert_nothing_left(conf, guest):
    state = conf.state_path
    assert os.listdir(os.path.join(state, 'operations')) == []
    assert glob.glob(os.path.join(state, 'snapshots', '*')) == []


@pytest.mark.parametrize('what', ['shut down from inside', 'deleted'])
def test_guest_gone_mid_snapshot_fails_cleanly(
        conf, load_driver, conn, workroot, guest_kit, glance, queued_image,
        what):
    workdir = tempfile.mkdtemp(dir=workroot, prefix='guest-')
    os.chmod(workdir, 0o755)
    path = os.path.join(workdir, 'disk.raw')
    subprocess.run(['dd', 'if=/dev/urandom', 'of=' + path, 'bs=1M',
                    'count=%d' % DISK_MIB, 'status=none'], check=True)
    guest = testguest.TestGuest(conn, workdir, agent=True,
                                disk={'path': path, 'format': 'raw'})
    try:
        guest.start()
        assert guest.run('true')[0] == 0     # its agent answers
        conf.set_override('snapshot_mode', 'live', group='libvirt')
        image_id = queued_image()
        thread, outcome = _snapshot_in_background(load_driver(), guest,
                                                  image_id)
        # Past the capture's instant: the job runs and the filesystems are
        # thawed (an agent command sent while they are frozen can stall the
        # agent, and the thaw behind it).
        _wait(lambda: _backup_running(guest) and _thawed(conf),
              'the backup job, filesystems thawed')
        if what == 'deleted':
            guest.dom.destroy()
            guest.dom.undefine()
        else:
            # Its own kernel ends it (the test domain has no ACPI, so a
            # poweroff only halts: a reboot ends it, on_reboot=destroy).
            # Under a loaded TCG host the agent may start the command late,
            # and the guest may be gone before the agent answers.
            try:
                guest.start_command('echo b > /proc/sysrq-trigger')
            except libvirt.libvirtError:
                pass
            _wait(lambda: guest.state() == libvirt.VIR_DOMAIN_SHUTOFF,
                  'the guest off', timeout=90, interval=0.1)
        thread.join(120)
        assert not thread.is_alive()
        assert outcome['error'] is not None
        assert glance.images.get(image_id)['status'] != 'active'
        _assert_nothing_left(conf, guest)
        if what != 'deleted':
            assert not _backup_running(guest)
            assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    finally:
        guest.destroy()


def test_glance_killed_mid_upload_leaves_the_guest_running(
        conf, load_driver, big_guest, private_glance):
    killed = private_glance('killed', 9595)
    conf.set_override('endpoint_override', killed.url, group='glance')
    # One retry (1 s) shows it gives up; the default 3 would wait 7 s.
    conf.set_override('num_retries', 1, group='glance')
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    glance = glanceclient.Client('2', endpoint=killed.url)
    image_id = glance.images.create(name='glance dies')['id']
    xml = big_guest.inactive_xml()
    thread, outcome = _snapshot_in_background(load_driver(), big_guest,
                                              image_id)
    _wait(lambda: _backup_running(big_guest), 'the backup job')
    time.sleep(0.5)
    killed.kill()
    thread.join(120)
    assert not thread.is_alive()
    assert outcome['error'] is not None, 'the snapshot succeeded'
    assert big_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert not _backup_running(big_guest)
    assert big_guest.inactive_xml() == xml
    _assert_nothing_left(conf, big_guest)
    killed.start()
    assert glance.images.get(image_id)['status'] != 'active'


def test_sigterm_past_the_grace_period_leaves_it_to_the_next_start(
        service, big_guest, glance):
    guest = big_guest
    # A block copy throttled to 1 MiB/s outlasts a 1 s grace period.
    svc = service(DEFAULT={'graceful_shutdown_timeout': 1},
                  libvirt={'snapshot_mode': 'live', 'use_backup_api': 'false',
                           'block_copy_bandwidth': 1})
    xml = guest.inactive_xml()
    image_id = svc.start_snapshot(guest, 'killed')
    _wait(lambda: guest.dom.blockJobInfo('vda', 0) != {}, 'the block copy')
    started = time.monotonic()
    assert svc.stop() == 1
    assert time.monotonic() - started < 30
    assert 'still running after 1 s' in svc.log_text()
    svc.start()
    assert guest.dom.blockJobInfo('vda', 0) == {}
    _assert_recovered(svc, guest, glance, xml, image_id)
