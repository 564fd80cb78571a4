"""Glance calls made again after a transient failure, and only safe ones."""

import io
from unittest import mock

from glanceclient import exc as glance_exc
import pytest

from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import glance


@pytest.fixture
def images():
    conf = config.CONF
    conf.set_override('num_retries', 2, group='glance')
    service = glance.ImageService(conf)
    service._client = mock.Mock()
    with mock.patch.object(glance.time, 'sleep') as sleep:
        yield service, sleep
    conf.reset()


def test_a_read_is_retried_after_a_5xx_then_succeeds(images):
    service, sleep = images
    service._client.images.get.side_effect = [
        glance_exc.HTTPServiceUnavailable('busy'), {'id': 'i'}]
    assert service.get('i') == {'id': 'i'}
    assert sleep.call_args_list == [mock.call(1)]


def test_retries_end_with_the_error(images):
    service, sleep = images
    service._client.images.get.side_effect = glance_exc.CommunicationError(
        'no route')
    with pytest.raises(exception.GlanceUnavailable):
        service.get('i')
    assert sleep.call_args_list == [mock.call(1), mock.call(2)]
    assert service._client.images.get.call_count == 3


def test_a_refusal_is_not_retried(images):
    service, sleep = images
    service._client.images.get.side_effect = glance_exc.HTTPForbidden('no')
    with pytest.raises(exception.GlanceRefused):
        service.get('i')
    sleep.assert_not_called()


def test_creating_an_image_is_never_repeated(images):
    service, sleep = images
    service._client.images.create.side_effect = (
        glance_exc.HTTPInternalServerError('oops'))
    with pytest.raises(exception.GlanceFailed):
        service.create('name', {})
    assert service._client.images.create.call_count == 1


def test_a_delete_that_finds_the_image_gone_is_done(images):
    service, _sleep = images
    service._client.images.delete.side_effect = [
        glance_exc.CommunicationError('lost'),
        glance_exc.HTTPNotFound('gone')]
    service.delete('i')
    assert service._client.images.delete.call_count == 2


def test_an_image_is_found_by_id_or_by_its_one_name(images):
    service, _sleep = images
    uuid = '11111111-2222-4333-8444-555555555555'
    service._client.images.get.return_value = {'id': uuid}
    assert service.find(uuid)['id'] == uuid
    service._client.images.list.side_effect = lambda filters: (
        [{'id': uuid}] if filters['os_hidden'] == 'true' else [])
    assert service.find('before-upgrade')['id'] == uuid
    service._client.images.list.side_effect = lambda filters: [
        {'id': 'a'}, {'id': 'b'}]
    with pytest.raises(exception.GlanceRefused) as e:
        service.find('twice')
    assert 'give an id' in str(e.value)
    service._client.images.list.side_effect = lambda filters: []
    with pytest.raises(exception.ImageNotFound):
        service.find('none')


def test_a_file_upload_whose_answer_was_lost_is_not_sent_twice(images):
    service, _sleep = images
    service._adapter = mock.Mock()
    service._adapter.get_endpoint.return_value = 'http://glance'
    service._adapter.put.side_effect = glance_exc.CommunicationError('lost')
    service._client.images.get.side_effect = [
        {'id': 'i', 'status': 'active', 'size': 3},
        {'id': 'i', 'status': 'active', 'size': 3}]
    service.upload('i', io.BytesIO(b'abc'), 3, 'raw', {})
    assert service._adapter.put.call_count == 1


def test_an_upload_patches_only_what_changes_and_drops_stale_records(images):
    """Glance checks each property of a patch; a base's record is not ours.

    Nova's API creates the snapshot's image with the base image's
    properties: a base that was itself a vmsnap snapshot leaves its digest
    there, which this snapshot may not record.
    """
    service, _sleep = images
    service._adapter = mock.Mock()
    service._adapter.get_endpoint.return_value = 'http://glance'
    service._client.images.get.return_value = {'id': 'i',
                                               'status': 'active'}
    current = {'id': 'i', 'status': 'queued', 'name': 'snap',
               'image_type': 'snapshot', 'hw_disk_bus': 'virtio',
               'vmsnap_content_sha256': 'base', 'vmsnap_memory': 'true',
               'vmsnap_mode': 'live'}
    service.upload('i', io.BytesIO(b'abc'), 3, 'qcow2', {
        'image_type': 'snapshot', 'hw_disk_bus': 'virtio',
        'vmsnap_mode': 'cold', 'vmsnap_content_tree_sha256': 'tree'},
        current=current)
    patch = service._adapter.patch.call_args.kwargs['json']
    assert patch == [
        {'op': 'add', 'path': '/container_format', 'value': 'bare'},
        {'op': 'add', 'path': '/disk_format', 'value': 'qcow2'},
        {'op': 'add', 'path': '/vmsnap_content_tree_sha256',
         'value': 'tree'},
        {'op': 'add', 'path': '/vmsnap_mode', 'value': 'cold'},
        {'op': 'remove', 'path': '/vmsnap_content_sha256'},
        {'op': 'remove', 'path': '/vmsnap_memory'}]
    # Nothing to change: no request at all.
    service._adapter.patch.reset_mock()
    service.set_properties('i', {})
    assert not service._adapter.patch.called


def test_connect_builds_the_client_without_a_request():
    service = glance.ImageService(config.CONF)
    with mock.patch.object(glance.glanceclient, 'Client') as client:
        service.connect()
        service.connect()
    client.assert_called_once()
    client.return_value.images.get.assert_not_called()
