"""ComputeManager: one snapshot per server, faults, clean shutdown."""

import threading
from unittest import mock

import pytest

from vmsnap_driver.compute import manager as manager_mod
from vmsnap_driver import exception

INSTANCE = manager_mod.Instance(uuid='u-1', name='vm')


class BlockingDriver:
    """A driver whose snapshot waits until the test lets it go."""

    def __init__(self, error=None):
        self.release = threading.Event()
        self.started = threading.Event()
        self.error = error
        self.states = []

    def snapshot(self, context, instance, image_id, update_task_state,
                 progress=None):
        self.started.set()
        update_task_state(task_state='image_pending_upload')
        self.states.append('image_pending_upload')
        self.release.wait(10)
        update_task_state(task_state='image_uploading',
                          expected_state='image_pending_upload')
        if self.error:
            raise self.error


def make(driver, workers=1):
    images = mock.Mock()
    images.create.side_effect = lambda name, props: {'id': 'img-' + name,
                                                     'props': props}
    return manager_mod.ComputeManager(driver, images, workers), images


def test_second_snapshot_of_a_server_is_refused_while_one_runs():
    driver = BlockingDriver()
    manager, images = make(driver)
    manager.snapshot(None, INSTANCE, 'a', {'k': 'v'}, 'ACTIVE')
    driver.started.wait(5)
    assert manager.task('u-1').state == 'image_pending_upload'
    with pytest.raises(exception.SnapshotInProgress):
        manager.snapshot(None, INSTANCE, 'b', {}, 'ACTIVE')
    driver.release.set()
    manager.stop()
    assert manager.task('u-1') is None
    assert manager.fault('u-1') is None
    props = images.create.call_args[0][1]
    assert props == {'k': 'v', 'image_type': 'snapshot',
                     'instance_uuid': 'u-1'}
    images.delete.assert_not_called()


def test_failure_deletes_image_and_records_fault():
    driver = BlockingDriver(error=exception.BlockJobTimeout(
        disk='vda', instance_uuid='u-1', timeout=1))
    driver.release.set()
    manager, images = make(driver)
    manager.snapshot(None, INSTANCE, 'a', {}, 'ACTIVE')
    manager.stop()
    images.delete.assert_called_once_with('img-a')
    fault = manager.fault('u-1')
    assert fault['code'] == 500
    assert fault['message'].startswith('BlockJobTimeout: ')


def test_stop_drops_queued_snapshots_and_deletes_their_images():
    driver = BlockingDriver()
    manager, images = make(driver, workers=1)
    manager.snapshot(None, INSTANCE, 'running', {}, 'ACTIVE')
    driver.started.wait(5)
    other = manager_mod.Instance(uuid='u-2', name='vm2')
    manager.snapshot(None, other, 'queued', {}, 'ACTIVE')
    threading.Timer(0.2, driver.release.set).start()
    manager.stop()
    images.delete.assert_called_once_with('img-queued')
    with pytest.raises(exception.ServiceStopping):
        manager.snapshot(None, other, 'late', {}, 'ACTIVE')


def test_task_state_changes_are_checked():
    class WrongDriver:
        def snapshot(self, context, instance, image_id, update_task_state,
                     progress=None):
            update_task_state(task_state='image_uploading',
                              expected_state='image_pending_upload')
    manager, images = make(WrongDriver())
    manager.snapshot(None, INSTANCE, 'a', {}, 'ACTIVE')
    manager.stop()
    assert 'UnexpectedTaskState' in manager.fault('u-1')['message']
    images.delete.assert_called_once_with('img-a')


class RevertingDriver:
    def __init__(self, refuse=None, error=None):
        self.refuse = refuse
        self.error = error
        self.done = threading.Event()

    def check_revert(self, context, instance, image_id):
        if self.refuse:
            raise self.refuse

    def revert(self, context, instance, image_id):
        self.done.set()
        if self.error:
            raise self.error


def test_rebuild_runs_in_background_and_never_deletes_the_snapshot():
    driver = RevertingDriver(error=exception.ImageCorrupt(
        image_id='snap', reason='bad digest'))
    manager, images = make(driver)
    manager.rebuild(None, INSTANCE, 'snap')
    manager.stop()
    assert driver.done.is_set()
    images.delete.assert_not_called()
    assert 'bad digest' in manager.fault('u-1')['message']
    assert manager.in_error('u-1')


def test_refused_rebuild_raises_at_once_and_frees_the_server():
    driver = RevertingDriver(refuse=exception.RevertRefused(
        instance_uuid='u-1', image_id='x', reason='foreign'))
    manager, _images = make(driver)
    with pytest.raises(exception.RevertRefused):
        manager.rebuild(None, INSTANCE, 'x')
    assert manager.task('u-1') is None
    assert not driver.done.is_set()
