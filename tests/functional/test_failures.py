"""Every failure leaves guest, domain, disk and Glance as they were.

Failures are provoked for real: a closed port for Glance, a second Glance
with a tiny size cap, a 1 MiB tmpfs, a block copy throttled past its
timeout, a file-size limit that makes qemu-img fail halfway through.
"""

import contextlib
import io
import os
import resource
import subprocess
import tempfile

import glanceclient
import libvirt
import pytest

from tests.functional import checks
from vmsnap_driver import exception


@pytest.fixture
def untouched(running_guest):
    """Check after the test that the shared guest is as it was."""
    guest = running_guest
    if guest.state() == libvirt.VIR_DOMAIN_PAUSED:
        guest.dom.resume()
    xml = guest.inactive_xml()
    counter = guest.last_counter()
    yield guest
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    guest.wait_counter_above(counter)


def assert_queued(glance, image_id):
    assert glance.images.get(image_id)['status'] == 'queued'


@contextlib.contextmanager
def file_size_limit(limit):
    """Children (qemu-img) get EFBIG past ``limit`` bytes of a file."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_unknown_instance(conf, load_driver, queued_image, glance):
    image_id = queued_image()
    missing = checks.Instance.__new__(checks.Instance)
    missing.uuid, missing.name = '5b8f0f2e-0000-4000-8000-000000000000', 'x'
    with pytest.raises(exception.InstanceNotFound) as err:
        load_driver().snapshot(None, missing, image_id)
    assert missing.uuid in str(err.value)
    assert_queued(glance, image_id)


def test_unknown_image(conf, load_driver, untouched):
    with pytest.raises(exception.ImageNotFound) as err:
        load_driver().snapshot(
            None, checks.Instance(untouched),
            '0b7c1d4e-0000-4000-8000-000000000000')
    assert 'Create the image' in str(err.value)
    checks.assert_no_leftovers(conf)


def test_image_not_queued(conf, load_driver, untouched, glance,
                          queued_image):
    image_id = queued_image()
    glance.images.update(image_id, disk_format='raw',
                         container_format='bare')
    glance.images.upload(image_id, io.BytesIO(b'x' * 512))
    with pytest.raises(exception.ImageNotQueued) as err:
        load_driver().snapshot(None, checks.Instance(untouched), image_id)
    assert '"active"' in str(err.value)


def test_glance_unreachable(conf, load_driver, untouched, queued_image):
    image_id = queued_image()
    conf.set_override('endpoint_override', 'http://127.0.0.1:9',
                      group='glance')
    # One retry (1 s) shows it gives up; the default 3 would wait 7 s.
    conf.set_override('num_retries', 1, group='glance')
    with pytest.raises(exception.GlanceUnavailable) as err:
        load_driver().snapshot(None, checks.Instance(untouched), image_id)
    assert 'endpoint_override' in str(err.value)
    checks.assert_no_leftovers(conf)


def test_glance_refuses_upload(conf, load_driver, untouched, refusing_glance):
    capped = glanceclient.Client('2', endpoint=refusing_glance)
    image_id = capped.images.create(name='too big')['id']
    conf.set_override('endpoint_override', refusing_glance, group='glance')
    try:
        with pytest.raises(exception.GlanceRefused) as err:
            load_driver().snapshot(None, checks.Instance(untouched), image_id)
        assert image_id in str(err.value)
        assert capped.images.get(image_id)['status'] != 'active'
        checks.assert_no_leftovers(conf)
    finally:
        capped.images.delete(image_id)


def test_no_space_fails_before_touching_guest(conf, load_driver, untouched,
                                              queued_image, glance,
                                              workroot):
    small = tempfile.mkdtemp(dir=workroot, prefix='tiny-')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0711',
                    'tmpfs', small], check=True)
    try:
        conf.set_override('snapshots_directory', small, group='libvirt')
        image_id = queued_image()
        with pytest.raises(exception.InsufficientSpace) as err:
            load_driver().snapshot(None, checks.Instance(untouched), image_id)
        assert small in str(err.value)
        assert os.listdir(small) == []
        assert_queued(glance, image_id)
    finally:
        subprocess.run(['umount', small], check=True)


def test_block_job_timeout_cancels_copy(conf, load_driver, untouched,
                                        queued_image, glance):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    conf.set_override('use_backup_api', False, group='libvirt')
    conf.set_override('block_copy_bandwidth', 1, group='libvirt')
    conf.set_override('block_job_timeout', 1, group='libvirt')
    image_id = queued_image()
    with pytest.raises(exception.BlockJobTimeout) as err:
        load_driver().snapshot(None, checks.Instance(untouched), image_id)
    assert 'block_job_timeout' in str(err.value)
    assert_queued(glance, image_id)
    checks.assert_no_leftovers(conf)


@pytest.mark.parametrize('mode, use_backup, compress', [
    ('live', False, False),   # block copy, then qemu-img convert
    ('cold', False, False),   # convert while the guest is saved
    ('live', False, True),    # block copy, compressed by qemu-img
])
def test_qemu_img_failure_restores_guest(mode, use_backup, compress, conf,
                                         load_driver, untouched,
                                         queued_image, glance):
    conf.set_override('snapshot_mode', mode, group='libvirt')
    conf.set_override('use_backup_api', use_backup, group='libvirt')
    conf.set_override('snapshot_compression', compress, group='libvirt')
    image_id = queued_image()
    with file_size_limit(1024 * 1024):
        with pytest.raises(exception.QemuImgFailed) as err:
            load_driver().snapshot(None, checks.Instance(untouched), image_id)
    assert 'qemu-img convert ' in str(err.value)
    assert 'File too large' in str(err.value)
    assert_queued(glance, image_id)
    checks.assert_no_leftovers(conf)


def test_live_refused_for_shut_off_guest(conf, load_driver, make_guest,
                                         queued_image, glance):
    conf.set_override('snapshot_mode', 'live', group='libvirt')
    guest = make_guest()
    xml = guest.inactive_xml()
    image_id = queued_image()
    with pytest.raises(exception.SnapshotUnsupported) as err:
        load_driver().snapshot(None, checks.Instance(guest), image_id)
    assert 'snapshot_mode = auto or cold' in str(err.value)
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    assert guest.inactive_xml() == xml
    assert_queued(glance, image_id)
