"""The orchestrator's order of steps, with every collaborator scripted."""

import contextlib
import datetime
import threading
import time
import types
from unittest import mock

import pytest

from vmsnap_driver.capture import base
from vmsnap_driver import config
from vmsnap_driver import digest
from vmsnap_driver import domain_record
from vmsnap_driver import driver as driver_mod
from vmsnap_driver import engine
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
    """Queued before the capture, done before the upload's own patch."""
    steps.images.set_properties.side_effect = (
        lambda image_id, props: steps.log.append('ahead'))
    send = engine._SentAhead.send

    def queued(ahead, properties):
        steps.log.append('queued')
        send(ahead, properties)
    with mock.patch.object(engine._SentAhead, 'send', queued):
        driver_mod.LibvirtDriver().snapshot(None, INSTANCE, 'img')
    assert steps.log.count('queued') == 2
    assert steps.log.count('ahead') == 2
    assert max(i for i, step in enumerate(steps.log)
               if step == 'queued') < steps.log.index('capture')
    assert max(i for i, step in enumerate(steps.log)
               if step == 'ahead') < steps.log.index('upload')
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
    # Both were queued before the capture failed: the first one is waited
    # for, the second one cancelled or waited for.
    assert 1 <= steps.log.count('ahead done') <= 2
    assert steps.log[-1] == 'ahead done'
    steps.images.upload.assert_not_called()


class _Patches:
    """A Glance whose patches wait to be let go, and can fail."""

    def __init__(self, fail=False):
        self.go = threading.Event()
        self.started = threading.Event()
        self.sent = []
        self.fail = fail

    def set_properties(self, image_id, properties):
        self.started.set()
        self.go.wait(5)
        self.sent.append(properties)
        if self.fail:
            raise exception.GlanceRefused(action='update', image_id=image_id,
                                          reason='403')


def test_patches_sent_ahead_go_in_order_without_what_the_image_holds():
    glance = _Patches()
    with engine._SentAhead(glance, {'id': 'img', 'a': '1'}) as ahead:
        ahead.send({'a': '1', 'b': '2'})
        ahead.send({'b': '2', 'c': '3'})
        ahead.send({'a': '1'})
        glance.go.set()
        assert ahead.image() == {'id': 'img', 'a': '1', 'b': '2', 'c': '3'}
    assert glance.sent == [{'b': '2'}, {'c': '3'}]
    assert ahead.properties == {'a': '1', 'b': '2', 'c': '3'}


def test_after_a_failed_patch_none_is_sent_and_sending_fails():
    glance = _Patches(fail=True)
    with pytest.raises(exception.GlanceRefused):
        with engine._SentAhead(glance, {'id': 'img'}) as ahead:
            ahead.send({'a': '1'})
            ahead.send({'b': '2'})
            glance.go.set()
            with pytest.raises(exception.GlanceRefused):
                ahead.image()
            # Known failed: the next patch is refused at once.
            ahead.send({'c': '3'})
    assert glance.sent == [{'a': '1'}]


def test_a_failure_cancels_the_patches_not_started_and_waits_for_one():
    glance = _Patches()
    with pytest.raises(KeyboardInterrupt):
        with engine._SentAhead(glance, {'id': 'img'}) as ahead:
            ahead.send({'a': '1'})
            ahead.send({'b': '2'})
            glance.started.wait(5)
            threading.Timer(0.2, glance.go.set).start()
            raise KeyboardInterrupt()
    assert glance.sent == [{'a': '1'}]
