"""Capture strategies against a scripted guest: the cleanup paths."""

from unittest import mock

import pytest

from vmsnap_driver import capture
from vmsnap_driver.capture import cold
from vmsnap_driver.capture import live
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import qemu_img

DISK = guest_mod.Disk('vda', 'file', '/disk.qcow2', 'qcow2', False)
CHAIN = [qemu_img.ImageInfo('/disk.qcow2', 'qcow2', 1024, 100,
                            '/base.qcow2', 'qcow2'),
         qemu_img.ImageInfo('/base.qcow2', 'qcow2', 1024, 200, None, None)]


def fake_guest(state=guest_mod.RUNNING, jobs=()):
    guest = mock.Mock(uuid='u-1')
    guest.name = 'vm'
    guest.state.return_value = state
    guest.block_job.side_effect = list(jobs)
    return guest


@mock.patch.object(qemu_img, 'create_overlay')
def test_live_yields_copy_after_cancel(create_overlay, tmp_path):
    job = guest_mod.BlockJob(cur=10, end=10)
    guest = fake_guest(jobs=[job, None])
    strategy = live.BlockCopyCapture(timeout=5, bandwidth_mib=2)
    with strategy.capture(guest, [DISK], [CHAIN], str(tmp_path)) as (view,):
        guest.abort_block_job.assert_called_once_with('vda')
    create_overlay.assert_called_once_with(
        str(tmp_path / 'copy.qcow2'), 1024, '/base.qcow2', 'qcow2')
    guest.block_copy.assert_called_once_with(
        'vda', str(tmp_path / 'copy.qcow2'), 'qcow2', 2 * 1024 * 1024)
    assert view.format == 'qcow2'
    assert view.started_at <= view.captured_at


@mock.patch.object(qemu_img, 'create_overlay')
@mock.patch('time.sleep')
def test_live_timeout_cancels_the_copy(sleep, create_overlay, tmp_path):
    job = guest_mod.BlockJob(cur=1, end=10)
    guest = fake_guest(jobs=[job] * 100)
    strategy = live.BlockCopyCapture(timeout=0)
    with pytest.raises(exception.BlockJobTimeout):
        with strategy.capture(guest, [DISK], [CHAIN], str(tmp_path)):
            pytest.fail('no view may be yielded')
    guest.abort_block_job.assert_called_once_with('vda')


@mock.patch.object(qemu_img, 'create_overlay')
def test_live_copy_that_vanishes_is_an_error(create_overlay, tmp_path):
    guest = fake_guest(jobs=[None, None])
    with pytest.raises(exception.HypervisorError) as err:
        with live.BlockCopyCapture(timeout=5).capture(
                guest, [DISK], [CHAIN], str(tmp_path)):
            pass
    assert 'ended before it was in sync' in str(err.value)
    guest.abort_block_job.assert_not_called()


def test_live_scratch_is_the_top_layer():
    assert live.BlockCopyCapture(timeout=1).scratch_bytes([CHAIN]) == 100


@pytest.mark.parametrize('state, paused', [(guest_mod.RUNNING, False),
                                           (guest_mod.PAUSED, True)])
def test_cold_restores_guest_even_when_flatten_fails(state, paused):
    guest = fake_guest(state=state)
    with pytest.raises(exception.QemuImgFailed):
        with cold.ManagedSaveCapture().capture(guest, [DISK], [CHAIN], '/w'):
            guest.launch.assert_not_called()
            raise exception.QemuImgFailed(command='c', exit_code=1,
                                          stderr='e')
    guest.managed_save.assert_called_once_with(paused=paused)
    guest.launch.assert_called_once_with()


def test_cold_leaves_shut_off_guest_alone():
    guest = fake_guest(state=guest_mod.SHUTOFF)
    with cold.ManagedSaveCapture().capture(guest, [DISK], [CHAIN],
                                           '/w') as (view,):
        assert view.path == '/disk.qcow2'
    guest.managed_save.assert_not_called()
    guest.launch.assert_not_called()


def test_cold_restore_failure_says_how_to_recover():
    guest = fake_guest()
    guest.launch.side_effect = exception.HypervisorError(
        action='start', instance_uuid='u-1', reason='boom')
    with pytest.raises(exception.GuestNotRestored) as err:
        with cold.ManagedSaveCapture().capture(guest, [DISK], [CHAIN], '/w'):
            pass
    assert 'virsh start u-1' in str(err.value)


def test_factory_prefers_backup_api_when_host_has_it():
    conf = mock.Mock()
    conf.block_job_timeout = 7
    conf.block_copy_bandwidth = 0
    conf.use_backup_api = True
    caps = mock.Mock(backup=True, qemu_owner=(1, 2))
    assert capture.get('live', conf, caps).method == 'backup'
    assert capture.get('cold', conf, caps).method == 'managedsave+backup'
    caps.backup = False
    assert capture.get('live', conf, caps).timeout == 7
    assert capture.get('cold', conf, caps).method == 'managedsave'
    caps.backup = True
    conf.use_backup_api = False
    assert capture.get('live', conf, caps).method == 'block_copy'


def test_cold_with_backup_resumes_before_the_disk_is_read(tmp_path):
    guest = fake_guest()
    strategy = cold.ManagedSaveCapture(use_backup=True)
    with strategy.capture(guest, [DISK], [CHAIN], str(tmp_path)) as (view,):
        assert view.nbd_export == 'vda'
        guest.launch_paused.assert_called_once_with()
        guest.resume.assert_called_once_with()
        guest.abort_job.assert_not_called()
    guest.abort_job.assert_called_once_with()
    guest.launch.assert_not_called()


def test_cold_with_backup_resumes_guest_when_export_fails(tmp_path):
    guest = fake_guest()
    guest.backup_begin.side_effect = exception.HypervisorError(
        action='backup', instance_uuid='u-1', reason='no')
    with pytest.raises(exception.HypervisorError):
        with cold.ManagedSaveCapture(use_backup=True).capture(
                guest, [DISK], [CHAIN], str(tmp_path)):
            pass
    guest.resume.assert_called_once_with()


def test_cold_with_backup_keeps_paused_guest_paused(tmp_path):
    guest = fake_guest(state=guest_mod.PAUSED)
    with cold.ManagedSaveCapture(use_backup=True).capture(
            guest, [DISK], [CHAIN], str(tmp_path)):
        pass
    guest.managed_save.assert_called_once_with(paused=True)
    guest.resume.assert_not_called()
