"""snapshot_disks = all: every disk at one instant, one image per disk."""

import os

import libvirt

from tests.functional import checks
from tests.functional import testguest


def counter_in(glance, image, workroot):
    local = checks.download(glance, image['id'],
                            os.path.join(workroot, 'disk-' + image['id']))
    try:
        result = testguest.read_ext4_files(local, image['disk_format'],
                                           ['counter'], workroot)
    finally:
        os.unlink(local)
    return int(result['files']['counter'])


def test_all_disks_hold_the_same_counter(conf, load_driver, make_guest,
                                         queued_image, glance, workroot):
    conf.set_override('snapshot_disks', 'all', group='libvirt')
    # The guest writes one counter to both disks, then sleeps 2 s: taking
    # the snapshot just after it printed a value puts the instant of
    # capture in that sleep.  Captured at one instant, both disks then
    # hold that value.
    guest = make_guest(second_disk=True, period=2)
    guest.start()
    xml = guest.inactive_xml()
    guest.wait_counter_above(guest.last_counter())
    image_id = queued_image()
    load_driver().snapshot(None, checks.Instance(guest), image_id)

    root = glance.images.get(image_id)
    others = dict(pair.split('=')
                  for pair in root['vmsnap_group_images'].split(','))
    assert list(others) == ['vdb']
    other = glance.images.get(others['vdb'])
    try:
        assert other['status'] == 'active'
        assert root['vmsnap_group_id'] == other['vmsnap_group_id']
        assert (root['vmsnap_disk_target'], other['vmsnap_disk_target']) == (
            'vda', 'vdb')
        assert root['vmsnap_disks'] == other['vmsnap_disks'] == 'vda,vdb'
        assert root['vmsnap_capture_end'] == other['vmsnap_capture_end']
        assert other['vmsnap_source_path'] == guest.second_disk['path']
        first = counter_in(glance, root, workroot)
        assert first > 0
        assert counter_in(glance, other, workroot) == first
    finally:
        glance.images.delete(other['id'])
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    checks.assert_no_leftovers(conf)


def test_two_disks_without_backup_api_refused_before_any_image(
        conf, load_driver, make_guest, queued_image, glance):
    conf.set_override('snapshot_disks', 'all', group='libvirt')
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('use_backup_api', False, group='libvirt')
    guest = make_guest(second_disk=True)
    guest.start()
    before = {image['id'] for image in glance.images.list()}
    image_id = queued_image()
    try:
        load_driver().snapshot(None, checks.Instance(guest), image_id)
    except Exception as e:
        assert 'backup API' in str(e)
    else:
        raise AssertionError('two disks were block-copied "at one instant"')
    after = {image['id'] for image in glance.images.list()}
    assert after - before == {image_id}
    assert glance.images.get(image_id)['status'] == 'queued'
