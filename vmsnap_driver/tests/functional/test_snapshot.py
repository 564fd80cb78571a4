"""Snapshots of real, running guests into a real Glance, checked byte for byte.

Each test boots a guest that has written a known file at boot (into its
qcow2 overlay), has a known file in its backing file, and rewrites and
fsyncs a counter twice a second.  The image must hold both files exactly, a
counter value from inside the snapshot window, and a filesystem that is
clean once its journal is replayed (as after a power cut, since a live copy
of a mounted filesystem is crash-consistent).
"""

import datetime
import json
import os
import subprocess
import time

import libvirt
import pytest

from vmsnap_driver.tests.functional import testguest

# What e2fsck fixes on any ext4 that was mounted when copied: the summary
# counters ext4 only writes back at unmount.  Anything else is damage.
RECOVERY_ONLY = ('Free blocks count wrong', 'Free inodes count wrong')


class Instance:
    """What the compute manager passes: an object with uuid and name."""

    def __init__(self, guest, image_ref=None, system_metadata=None):
        self.uuid = guest.uuid
        self.name = guest.name
        self.image_ref = image_ref
        self.system_metadata = system_metadata or {}


class TaskStates:
    """update_task_state that checks expected_state as Nova's manager does."""

    def __init__(self):
        self.state = None
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        assert expected_state is None or expected_state == self.state, (
            'task state is %s, driver expected %s' % (self.state,
                                                      expected_state))
        self.state = task_state
        self.calls.append((task_state, expected_state))


def guest_snapshot(driver, guest, image_id, **instance_kwargs):
    """Snapshot and return the counter window and task-state calls."""
    tasks = TaskStates()
    before = guest.last_counter()
    driver.snapshot(None, Instance(guest, **instance_kwargs), image_id,
                    tasks)
    after = guest.last_counter()
    assert tasks.calls == [('image_pending_upload', None),
                           ('image_uploading', 'image_pending_upload')]
    return before, after


def download(glance, image_id, dest):
    with open(dest, 'wb') as f:
        for chunk in glance.images.data(image_id):
            f.write(chunk)
    return dest


def assert_image_holds(glance, image_id, guest, workdir, window,
                       image_format='qcow2'):
    image = glance.images.get(image_id)
    assert image['status'] == 'active'
    assert image['disk_format'] == image_format
    assert image['container_format'] == 'bare'
    assert image['image_type'] == 'snapshot'
    assert image['instance_uuid'] == guest.uuid
    assert image['vmsnap_source_disk'] == 'vda'
    assert image['vmsnap_source_path'] == guest.disk['path']
    start = datetime.datetime.fromisoformat(image['vmsnap_capture_start'])
    end = datetime.datetime.fromisoformat(image['vmsnap_capture_end'])
    assert start <= end

    local = download(glance, image_id, os.path.join(workdir, 'image'))
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '--output=json', '-f', image_format, local],
        check=True, capture_output=True, text=True).stdout)
    assert 'backing-filename' not in info, 'image is not flattened'
    assert info['virtual-size'] == 64 * 1024 * 1024

    result = testguest.read_ext4_files(
        local, image_format, ['boot.bin', 'base.bin', 'counter'], workdir)
    os.unlink(local)
    assert result['check'].returncode == 0, result['check'].stdout
    # e2fsck prints each problem on the line before its "Fix? yes".
    lines = [line for line in result['repair'].stdout.splitlines() if line]
    fixed = [lines[i - 1] for i, line in enumerate(lines)
             if line == 'Fix? yes']
    unexpected = [line for line in fixed if not line.startswith(RECOVERY_ONLY)]
    assert not unexpected, result['repair'].stdout
    files = result['files']
    assert files['base.bin'] == guest.base_data, 'backing file data differs'
    assert files['boot.bin'] == guest.boot_data, 'overlay data differs'
    counter = int(files['counter'])
    low, high = window
    assert low <= counter <= high + 1, (
        'counter %d outside the snapshot window [%d, %d]'
        % (counter, low, high + 1))
    return image, counter


def assert_guest_untouched(guest, xml_before, state):
    assert guest.state() == state
    assert guest.dom.isPersistent()
    assert guest.inactive_xml() == xml_before
    if guest.dom.isActive():
        assert guest.dom.blockJobInfo('vda', 0) == {}
    assert not guest.dom.hasManagedSaveImage(0)
    assert guest.boots() == 1


def assert_no_leftovers(conf):
    directory = conf.libvirt.snapshots_directory
    leftovers = os.listdir(directory) if os.path.isdir(directory) else []
    assert leftovers == []


def test_live_snapshot_of_running_guest(conf, load_driver, make_guest,
                                        queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id,
                            image_ref='base-image-id',
                            system_metadata={'image_os_distro': 'debian',
                                             'image_size': '1'})

    image, counter = assert_image_holds(glance, image_id, guest, workroot,
                                        window)
    assert image['vmsnap_mode'] == 'live'
    assert image['base_image_ref'] == 'base-image-id'
    assert image['os_distro'] == 'debian'
    # The guest ran on: its counter moved past what the image holds.
    guest.wait_counter_above(counter + 1)
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    assert_no_leftovers(conf)


def test_live_snapshot_of_paused_guest_stays_paused(
        conf, load_driver, make_guest, queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    guest = make_guest()
    guest.start()
    guest.dom.suspend()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id)

    image, counter = assert_image_holds(glance, image_id, guest, workroot,
                                        window)
    assert image['vmsnap_mode'] == 'live'
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_PAUSED)
    guest.dom.resume()
    guest.wait_counter_above(counter + 1)


def test_live_snapshot_of_raw_disk_compressed(conf, load_driver, make_guest,
                                              queued_image, glance,
                                              workroot):
    """A disk without a backing file is copied whole, then compressed."""
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('snapshot_compression', True, group='libvirt')
    guest = make_guest(disk_format='raw')
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id)

    image, _counter = assert_image_holds(glance, image_id, guest, workroot,
                                         window)
    assert image['vmsnap_source_format'] == 'raw'
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    assert_no_leftovers(conf)


def test_cold_snapshot_resumes_guest_without_reboot(
        conf, load_driver, make_guest, queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'cold', group='libvirt')
    conf.set_override('snapshot_image_format', 'raw', group='libvirt')
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id)

    image, counter = assert_image_holds(glance, image_id, guest, workroot,
                                        window, image_format='raw')
    assert image['vmsnap_mode'] == 'cold'
    # Resumed from saved memory: counting goes on past the image's value
    # and the guest never printed a second boot line.
    guest.wait_counter_above(counter + 1)
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    assert_no_leftovers(conf)


def test_cold_snapshot_of_paused_guest_comes_back_paused(
        conf, load_driver, make_guest, queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'cold', group='libvirt')
    guest = make_guest()
    guest.start()
    guest.dom.suspend()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id)

    _image, counter = assert_image_holds(glance, image_id, guest, workroot,
                                         window)
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_PAUSED)
    guest.dom.resume()
    guest.wait_counter_above(counter + 1)
    assert guest.boots() == 1


def test_auto_picks_live_for_running_guest(conf, load_driver, make_guest,
                                           queued_image, glance, workroot):
    assert conf.libvirt.snapshot_mode == 'auto'
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = guest_snapshot(load_driver(), guest, image_id)

    image, _counter = assert_image_holds(glance, image_id, guest, workroot,
                                         window)
    assert image['vmsnap_mode'] == 'live'
    assert 'can copy disk vda while the guest runs' in (
        image['vmsnap_mode_reason'])
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)


def test_auto_takes_shut_off_guest_cold_without_starting_it(
        conf, load_driver, make_guest, queued_image, glance, workroot):
    guest = make_guest()
    guest.start()
    # Let the guest make a few counter values durable, then cut its power.
    guest.wait_counter_above(guest.last_counter() + 2)
    guest.dom.destroy()
    last = guest.last_counter()
    xml = guest.inactive_xml()
    image_id = queued_image()

    guest_snapshot(load_driver(), guest, image_id)

    image, _counter = assert_image_holds(glance, image_id, guest, workroot,
                                         (last - 1, last))
    assert image['vmsnap_mode'] == 'cold'
    assert 'shutoff' in image['vmsnap_mode_reason']
    assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_SHUTOFF)
    assert_no_leftovers(conf)


def test_snapshots_of_one_guest_run_one_at_a_time(conf, load_driver,
                                                  make_guest, queued_image,
                                                  glance):
    """Two snapshots asked at once both succeed, one after the other."""
    import threading

    guest = make_guest()
    guest.start()
    images = [queued_image(), queued_image()]
    errors = []

    def run(image_id):
        try:
            load_driver().snapshot(None, Instance(guest), image_id)
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    windows = sorted(
        (glance.images.get(i)['vmsnap_capture_start'],
         glance.images.get(i)['vmsnap_capture_end']) for i in images)
    assert windows[0][1] <= windows[1][0], 'captures overlapped'
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    # Give the console a moment, then check the guest still counts.
    time.sleep(0.1)
    guest.wait_counter_above(guest.last_counter())
