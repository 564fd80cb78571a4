"""The orchestrator's order of steps, with every collaborator scripted."""

import contextlib
import datetime
import time
import types
from unittest import mock

import pytest

from vmsnap_driver.capture import base
from vmsnap_driver import config
from vmsnap_driver import digest
from vmsnap_driver import domain_record
from vmsnap_driver import driver as driver_mod
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import host as host_mod
from vmsnap_driver import qemu_img

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
DISK = guest_mod.Disk('vda', 'file', '/disk.qcow2', 'qcow2', False)
CHAIN = [qemu_img.ImageInfo('/disk.qcow2', 'qcow2', 1024, 100, None, None)]
INSTANCE = types.SimpleNamespace(uuid='u-1', name='vm')


@pytest.fixture
def steps(tmp_path):
    """Record every step the driver takes, in order."""
    log = []
    conf = config.CONF
    conf.set_override('state_path', str(tmp_path))
    conf.set_override('lock_path', str(tmp_path), group='oslo_concurrency')

    guest = mock.Mock(uuid='u-1')
    guest.name = 'vm'
    guest.root_disk.return_value = DISK
    guest.state.return_value = guest_mod.RUNNING
    guest.has_agent_channel.return_value = True
    guest.inactive_xml.return_value = "<domain><name>vm</name></domain>"
    guest.freeze_filesystems.side_effect = lambda t: log.append('freeze')
    guest.thaw_filesystems.side_effect = lambda: log.append('thaw')

    class Strategy(base.Capture):
        mode = 'live'
        method = 'scripted'

        def scratch_bytes(self, chain):
            return 0

        @contextlib.contextmanager
        def capture(self, guest, disks, chains, workdir, freeze, record):
            log.append('capture')
            with freeze():
                log.append('point in time')
            yield [base.DiskView(NOW, NOW, path='/copy', format='qcow2')]
            log.append('release')

    def flatten(source, source_format, dest, dest_format, compress):
        log.append('flatten')
        with open(dest, 'wb') as f:
            f.write(b'flat image')

    images = mock.Mock()
    # As Nova's API creates it: some properties are there already.
    images.check_queued.side_effect = lambda i: log.append(
        'check image') or {'id': i, 'name': 'snap', 'image_type': 'snapshot',
                           'instance_uuid': 'stale'}
    images.upload.side_effect = lambda *a, **k: log.append('upload')
    with mock.patch.object(host_mod.Host, 'get_guest', return_value=guest), \
            mock.patch.object(host_mod.Host, 'capabilities', return_value=(
                host_mod.Capabilities('QEMU', (9, 0, 0), (7, 2, 0)))), \
            mock.patch('vmsnap_driver.glance.ImageService',
                       return_value=images), \
            mock.patch('vmsnap_driver.capture.get',
                       return_value=Strategy()), \
            mock.patch.object(qemu_img, 'info', return_value=CHAIN), \
            mock.patch('vmsnap_driver.digest.of_snapshot_file',
                       return_value=digest.Digests('d' * 64, None, None)), \
            mock.patch.object(qemu_img, 'convert', side_effect=flatten):
        yield types.SimpleNamespace(log=log, images=images, guest=guest)
    conf.reset()


def test_steps_run_in_order_with_task_states(steps):
    tasks = []

    def update_task_state(task_state, expected_state=None):
        steps.log.append(task_state)
        tasks.append((task_state, expected_state))

    driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img',
                                        update_task_state)
    assert steps.log == ['check image', 'image_pending_upload', 'capture',
                         'freeze', 'point in time', 'thaw', 'flatten',
                         'release', 'image_uploading', 'upload']
    assert tasks[1] == ('image_uploading', 'image_pending_upload')
    image_id, data, size, fmt, props = steps.images.upload.call_args[0]
    # What the image holds already, what was sent ahead included, goes
    # with it: the upload's patch sends only the rest.
    current = steps.images.upload.call_args.kwargs['current']
    assert current['instance_uuid'] == INSTANCE.uuid
    assert 'vmsnap_capture_end' not in current
    assert (image_id, size, fmt) == ('img', len(b'flat image'), 'qcow2')
    assert props['vmsnap_mode'] == 'live'
    assert props['instance_uuid'] == INSTANCE.uuid
    assert props['vmsnap_content_sha256'] == 'd' * 64
    assert props['vmsnap_consistency'] == 'filesystem-frozen'
    assert float(props['vmsnap_freeze_seconds']) < 1


def test_image_is_checked_before_the_guest_is_touched(steps):
    steps.images.check_queued.side_effect = exception.ImageNotFound(
        image_id='img')
    with pytest.raises(exception.ImageNotFound):
        driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img')
    assert steps.log == []
    steps.guest.managed_save.assert_not_called()
    steps.guest.block_copy.assert_not_called()


def test_init_host_connects_libvirt_and_builds_the_glance_client(steps):
    """At service start, so that the first snapshot costs no more."""
    with mock.patch.object(host_mod.Host, 'connect') as connect:
        driver_mod.LibvirtDriver().init_host('compute-1')
    connect.assert_called_once_with()
    steps.images.connect.assert_called_once_with()
    steps.images.check_queued.assert_not_called()


def test_the_domain_record_and_the_plan_are_set_while_the_capture_runs(
        steps):
    """Ahead of the upload, which then does not send them again."""
    steps.images.set_properties.side_effect = (
        lambda image_id, props: steps.log.append('ahead'))
    driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img')
    assert steps.log.count('ahead') == 2
    assert steps.log.index('ahead') < steps.log.index('upload')
    (image_id, record), (_, planned) = [
        call[0] for call in steps.images.set_properties.call_args_list]
    assert image_id == 'img'
    assert record == domain_record.properties(
        steps.guest.inactive_xml.return_value)
    assert planned['vmsnap_mode'] == 'live'
    assert planned['instance_uuid'] == INSTANCE.uuid
    # Only the capture fixes its instant: the upload's patch sends it.
    assert 'vmsnap_capture_end' not in planned
    assert 'vmsnap_capture_end' in steps.images.upload.call_args[0][4]
    current = steps.images.upload.call_args.kwargs['current']
    sent = dict(record, **planned)
    assert {key: current[key] for key in sent} == sent


def test_a_failed_patch_sent_ahead_fails_the_snapshot(steps):
    """And the patches after it are not sent."""
    steps.images.set_properties.side_effect = exception.GlanceRefused(
        action='update', image_id='img', reason='403')
    with pytest.raises(exception.GlanceRefused):
        driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img')
    steps.images.upload.assert_not_called()
    steps.images.set_properties.assert_called_once()


def test_a_failed_snapshot_waits_for_the_patch_sent_ahead(steps):
    """Its caller deletes the image next: no patch may land after that."""
    def slow_patch(image_id, props):
        time.sleep(0.2)
        steps.log.append('ahead done')
    steps.images.set_properties.side_effect = slow_patch
    with mock.patch.object(qemu_img, 'convert',
                           side_effect=exception.QemuImgFailed(
                               exit_code=1, command='convert',
                               stderr='No space left on device')):
        with pytest.raises(exception.QemuImgFailed):
            driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img')
    assert 'ahead done' in steps.log
    steps.images.upload.assert_not_called()
