"""Snapshots of real, running guests into a real Glance, checked byte for byte.

Each test boots a guest that has written a known file at boot (into its
qcow2 overlay), has a known file in its backing file, and rewrites and
fsyncs a counter twice a second.  The image must hold both files exactly, a
counter value from inside the snapshot window, and a filesystem that is
clean once its journal is replayed (as after a power cut, since a live copy
of a mounted filesystem is crash-consistent).
"""

import json
import os
import subprocess
import threading
import time

import libvirt
import pytest

from tests.functional import checks


# Each live and cold path, with and without libvirt's backup API.
LIVE_METHODS = [(True, 'backup'), (False, 'block_copy')]
COLD_METHODS = [(True, 'managedsave+backup'), (False, 'managedsave')]


@pytest.mark.parametrize('use_backup, method', LIVE_METHODS)
def test_live_snapshot_of_running_guest(use_backup, method, conf,
                                        load_driver, make_guest,
                                        queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('use_backup_api', use_backup, group='libvirt')
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = checks.guest_snapshot(
        load_driver(), guest, image_id, image_ref='base-image-id',
        system_metadata={'image_os_distro': 'debian', 'image_size': '1'})

    image, counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window)
    assert image['vmsnap_mode'] == 'live'
    assert image['vmsnap_capture_method'] == method
    assert image['base_image_ref'] == 'base-image-id'
    assert image['os_distro'] == 'debian'
    # The guest ran on: its counter moved past what the image holds.
    guest.wait_counter_above(counter + 1)
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    checks.assert_no_leftovers(conf)


@pytest.mark.parametrize('use_backup, method', LIVE_METHODS)
def test_live_snapshot_of_paused_guest_stays_paused(
        use_backup, method, conf, load_driver, make_guest, queued_image,
        glance, workroot):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('use_backup_api', use_backup, group='libvirt')
    guest = make_guest()
    guest.start()
    guest.dom.suspend()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = checks.guest_snapshot(load_driver(), guest, image_id)

    image, counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window)
    assert image['vmsnap_mode'] == 'live'
    assert image['vmsnap_capture_method'] == method
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_PAUSED)
    guest.dom.resume()
    guest.wait_counter_above(counter + 1)


@pytest.mark.parametrize('compression', ['zlib', 'zstd'])
def test_live_snapshot_of_raw_disk_compressed(conf, load_driver, make_guest,
                                              queued_image, glance,
                                              workroot, compression):
    """The export is compressed as it streams into Glance.

    Glance's format inspector takes either compression type, and qemu-img
    finds the clusters compressed and every refcount right.
    """
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('snapshot_compression', True, group='libvirt')
    conf.set_override('snapshot_compression_type', compression,
                      group='libvirt')
    guest = make_guest(disk_format='raw')
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = checks.guest_snapshot(load_driver(), guest, image_id)

    image, _counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window)
    assert image['vmsnap_source_format'] == 'raw'
    stored = checks.download(glance, image_id,
                             os.path.join(workroot, image_id + '.qcow2'))
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '--output=json', '-f', 'qcow2', stored],
        check=True, capture_output=True, text=True).stdout)
    assert info['format-specific']['data']['compression-type'] == compression
    check = json.loads(subprocess.run(
        ['qemu-img', 'check', '--output=json', '-f', 'qcow2', stored],
        check=True, capture_output=True, text=True).stdout)
    assert check['compressed-clusters'] > 0
    assert image['size'] < check['allocated-clusters'] * 65536
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    checks.assert_no_leftovers(conf)


@pytest.mark.parametrize('use_backup, method', COLD_METHODS)
def test_cold_snapshot_resumes_guest_without_reboot(
        use_backup, method, conf, load_driver, make_guest, queued_image,
        glance, workroot):
    conf.set_override('snapshot_mode', 'cold', group='libvirt')
    conf.set_override('use_backup_api', use_backup, group='libvirt')
    conf.set_override('snapshot_image_format', 'raw', group='libvirt')
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = checks.guest_snapshot(load_driver(), guest, image_id)

    image, counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window, image_format='raw')
    assert image['vmsnap_mode'] == 'cold'
    assert image['vmsnap_capture_method'] == method
    # Resumed from saved memory: counting goes on past the image's value
    # and the guest never printed a second boot line.
    guest.wait_counter_above(counter + 1)
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    checks.assert_no_leftovers(conf)


def test_cold_snapshot_of_paused_guest_comes_back_paused(
        conf, load_driver, make_guest, queued_image, glance, workroot):
    conf.set_override('snapshot_mode', 'cold', group='libvirt')
    guest = make_guest()
    guest.start()
    guest.dom.suspend()
    xml = guest.inactive_xml()
    image_id = queued_image()

    window = checks.guest_snapshot(load_driver(), guest, image_id)

    _image, counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window)
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_PAUSED)
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

    window = checks.guest_snapshot(load_driver(), guest, image_id)

    image, _counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, window)
    assert image['vmsnap_mode'] == 'live'
    assert 'can copy disk vda while the guest runs' in (
        image['vmsnap_mode_reason'])
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)


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

    checks.guest_snapshot(load_driver(), guest, image_id)

    image, _counter = checks.assert_image_holds(
        glance, image_id, guest, workroot, (last - 1, last))
    assert image['vmsnap_mode'] == 'cold'
    assert 'shutoff' in image['vmsnap_mode_reason']
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_SHUTOFF)
    checks.assert_no_leftovers(conf)


def test_snapshots_of_one_guest_run_one_at_a_time(conf, load_driver,
                                                  make_guest, queued_image,
                                                  glance):
    """Two snapshots asked at once both succeed, one after the other."""
    guest = make_guest()
    guest.start()
    images = [queued_image(), queued_image()]
    errors = []

    def run(image_id):
        try:
            load_driver().snapshot(None, checks.Instance(guest), image_id)
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
