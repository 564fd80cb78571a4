"""The Compute API application against a scripted host and manager."""

import json
from unittest import mock

from oslo_config import cfg
import webob

from vmsnap_driver.api import app
from vmsnap_driver.compute import manager as manager_mod
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import policy

UUID = '11111111-2222-4333-8444-555555555555'


def make_app(trusted=True, owner='project-a'):
    guest = mock.Mock(uuid=UUID)
    guest.name = 'vm1'
    guest.owner_project.return_value = owner
    guest.state.return_value = guest_mod.RUNNING
    guest.has_managed_save.return_value = False
    guest.hardware.return_value = (2, 512)
    guest.facts.return_value = guest_mod.ServerFacts()
    guest.disks.return_value = [guest_mod.Disk('vda', 'file',
                                               '/var/lib/x/disk.qcow2',
                                               'qcow2', False)]
    host = mock.Mock()
    host.list_guests.return_value = [guest]

    def get_guest(uuid):
        if uuid != UUID:
            raise exception.InstanceNotFound(instance_uuid=uuid, uri='x')
        return guest
    host.get_guest.side_effect = get_guest
    manager = mock.Mock()
    manager.task.return_value = None
    manager.fault.return_value = None
    manager.in_error.return_value = False
    manager.snapshot.return_value = 'img-1'
    images = mock.Mock()
    images.image_location.return_value = 'http://glance/v2/images/img-1'
    conf = cfg.ConfigOpts()
    conf([], default_config_files=[])
    return app.ComputeAPI(host, manager, images, policy.Enforcer(conf),
                          trusted=trusted), manager, guest


def call(application, method, path, body=None, version=None,
         roles=None, project=None):
    req = webob.Request.blank(path, method=method)
    if roles is not None:
        # What keystonemiddleware puts in front of the application.
        req.headers['X-Roles'] = ','.join(roles)
        req.headers['X-Project-Id'] = project
    if body is not None:
        req.body = body if isinstance(body, bytes) else json.dumps(
            body).encode()
    if version:
        req.headers['OpenStack-API-Version'] = 'compute ' + version
    resp = req.get_response(application)
    return resp.status_int, resp.headers, (resp.json if resp.body else None)


def test_versions():
    application, _m, _g = make_app()
    status, _h, body = call(application, 'GET', '/')
    assert status == 200
    assert body['versions'][0]['version'] == '2.47'
    status, _h, body = call(application, 'GET', '/v2.1/')
    assert body['version']['min_version'] == '2.1'


def test_microversion_is_negotiated_and_echoed():
    application, _m, _g = make_app()
    _s, headers, body = call(application, 'GET', '/v2.1/servers/' + UUID,
                             version='2.45')
    assert headers['OpenStack-API-Version'] == 'compute 2.45'
    assert body['server']['flavor'] == {'id': 'vmsnap-2cpu-512mb',
                                        'links': []}
    _s, headers, body = call(application, 'GET', '/v2.1/servers/' + UUID,
                             version='latest')
    assert headers['OpenStack-API-Version'] == 'compute 2.47'
    assert body['server']['flavor']['vcpus'] == 2
    status, _h, body = call(application, 'GET', '/v2.1/servers',
                            version='3.0')
    assert status == 406


def test_server_status_follows_libvirt_and_task():
    application, manager, guest = make_app()
    guest.state.return_value = guest_mod.SHUTOFF
    guest.has_managed_save.return_value = True
    _s, _h, body = call(application, 'GET', '/v2.1/servers/detail')
    server = body['servers'][0]
    assert (server['status'], server['OS-EXT-STS:vm_state']) == (
        'SUSPENDED', 'suspended')
    manager.task.return_value = manager_mod.Task(
        'image_uploading', 'ACTIVE', uploaded=3, expected=4)
    _s, _h, body = call(application, 'GET', '/v2.1/servers/' + UUID)
    assert body['server']['status'] == 'ACTIVE'
    assert body['server']['progress'] == 25 + 74 * 3 // 4


def test_create_image_answers_202_with_image_id():
    application, manager, _g = make_app()
    status, headers, body = call(
        application, 'POST', '/v2.1/servers/%s/action' % UUID,
        {'createImage': {'name': 'snap', 'metadata': {'a': 'b'}}},
        version='2.45')
    assert status == 202
    assert body == {'image_id': 'img-1'}
    assert headers['Location'] == 'http://glance/v2/images/img-1'
    args = manager.snapshot.call_args[0]
    assert args[2:] == ('snap', {'a': 'b'}, 'ACTIVE')
    status, headers, body = call(
        application, 'POST', '/v2.1/servers/%s/action' % UUID,
        {'createImage': {'name': 'snap'}})
    assert (status, body) == (202, None)


def test_conflict_and_unsnapshottable_states_are_409():
    application, manager, guest = make_app()
    manager.snapshot.side_effect = exception.SnapshotInProgress(
        instance_uuid=UUID, task_state='image_uploading')
    status, _h, body = call(application, 'POST',
                            '/v2.1/servers/%s/action' % UUID,
                            {'createImage': {'name': 'x'}})
    assert status == 409 and 'conflictingRequest' in body
    guest.state.return_value = guest_mod.CRASHED
    status, _h, body = call(application, 'POST',
                            '/v2.1/servers/%s/action' % UUID,
                            {'createImage': {'name': 'x'}})
    assert status == 409 and 'ERROR' in body['conflictingRequest']['message']


def test_unexpected_errors_are_500_faults():
    application, manager, _g = make_app()
    manager.task.side_effect = RuntimeError('boom')
    status, _h, body = call(application, 'GET', '/v2.1/servers/' + UUID)
    assert status == 500
    assert body['computeFault']['message'].startswith('Unexpected error')


def test_name_filter():
    application, _m, _g = make_app()
    _s, _h, body = call(application, 'GET', '/v2.1/servers?name=vm')
    assert len(body['servers']) == 1
    _s, _h, body = call(application, 'GET', '/v2.1/servers?name=other')
    assert body['servers'] == []
    _s, _h, body = call(application, 'GET', '/v2.1/servers?name=(')
    assert body['servers'] == []


def test_rebuild_answers_202_with_the_server_rebuilding():
    application, manager, _g = make_app()
    manager.task.return_value = manager_mod.Task('rebuilding', 'REBUILD')
    status, _h, body = call(application, 'POST',
                            '/v2.1/servers/%s/action' % UUID,
                            {'rebuild': {'imageRef': UUID}})
    assert status == 202
    assert body['server']['status'] == 'REBUILD'
    assert body['server']['OS-EXT-STS:task_state'] == 'rebuilding'
    assert manager.rebuild.call_args[0][2] == UUID


def test_rebuild_refusals_are_400_and_name_why():
    application, manager, _g = make_app()
    action = '/v2.1/servers/%s/action' % UUID
    for body, words in [
            ({'rebuild': {}}, "'imageRef' is a required property"),
            ({'rebuild': {'imageRef': 'nope'}}, 'imageRef'),
            ({'rebuild': {'imageRef': UUID, 'name': 'x'}},
             'it changes nothing else')]:
        status, _h, answer = call(application, 'POST', action, body)
        assert status == 400, body
        assert words in answer['badRequest']['message']
    manager.rebuild.assert_not_called()
    manager.rebuild.side_effect = exception.RevertRefused(
        instance_uuid=UUID, image_id=UUID, reason='not a snapshot of it')
    status, _h, answer = call(application, 'POST', action,
                              {'rebuild': {'imageRef': UUID}})
    assert status == 400
    assert 'not a snapshot of it' in answer['badRequest']['message']


def test_a_failed_rebuild_shows_error():
    application, manager, _g = make_app()
    manager.in_error.return_value = True
    _s, _h, body = call(application, 'GET', '/v2.1/servers/' + UUID)
    assert body['server']['status'] == 'ERROR'


def test_create_image_metadata_may_not_set_reserved_fields():
    application, manager, _g = make_app()
    action = '/v2.1/servers/%s/action' % UUID
    for key in ('visibility', 'owner', 'os_hidden', 'instance_uuid',
                'vmsnap_mode', 'Protected'):
        status, _h, answer = call(application, 'POST', action, {
            'createImage': {'name': 'x', 'metadata': {key: 'v'}}})
        assert status == 400, key
        assert repr(key) in answer['badRequest']['message']
    status, _h, answer = call(application, 'POST', action, {
        'createImage': {'name': 'x', 'metadata': {
            'k%d' % i: 'v' for i in range(129)}}})
    assert status == 403
    manager.snapshot.assert_not_called()
    status, _h, _b = call(application, 'POST', action, {
        'createImage': {'name': 'x', 'metadata': {'vmsnap_memory': 'true'}}})
    assert status == 202


def test_request_bodies_over_novas_limit_are_413():
    application, manager, _g = make_app()
    body = {'createImage': {'name': 'x', 'metadata': {
        'k': 'v' * 200000}}}
    status, _h, answer = call(application, 'POST',
                              '/v2.1/servers/%s/action' % UUID, body)
    assert status == 413 and 'overLimit' in answer
    manager.snapshot.assert_not_called()


def test_keystone_users_see_and_act_on_their_own_project_only():
    application, manager, _g = make_app(trusted=False, owner='project-a')
    server = '/v2.1/servers/' + UUID
    action = server + '/action'
    snapshot = {'createImage': {'name': 'x'}}
    member_a = dict(roles=['member', 'reader'], project='project-a')
    member_b = dict(roles=['member', 'reader'], project='project-b')
    reader_a = dict(roles=['reader'], project='project-a')
    admin = dict(roles=['admin'], project='admin-project')

    assert call(application, 'GET', server, **member_a)[0] == 200
    assert call(application, 'POST', action, snapshot, **member_a)[0] == 202
    # Another project's server does not exist for them.
    assert call(application, 'GET', server, **member_b)[0] == 404
    assert call(application, 'POST', action, snapshot, **member_b)[0] == 404
    _s, _h, body = call(application, 'GET', '/v2.1/servers', **member_b)
    assert body['servers'] == []
    # A reader sees it but may not change it.
    assert call(application, 'POST', action, snapshot, **reader_a)[0] == 403
    assert call(application, 'POST', action, snapshot, **admin)[0] == 202
    assert manager.snapshot.call_count == 2


def test_a_domain_without_owner_is_the_admins_alone():
    application, _m, _g = make_app(trusted=False, owner=None)
    server = '/v2.1/servers/' + UUID
    assert call(application, 'GET', server, roles=['member', 'reader'],
                project='project-a')[0] == 404
    assert call(application, 'GET', server, roles=['admin'],
                project='x')[0] == 200


def test_a_server_shows_what_its_domain_holds():
    application, _m, guest = make_app()
    _s, _h, body = call(application, 'GET', '/v2.1/servers/' + UUID)
    server = body['server']
    # No Nova record: its disk file, never "booted from volume".
    assert server['image'] == {'id': 'disk.qcow2', 'links': []}
    assert server['OS-SRV-USG:launched_at'] is None
    guest.facts.return_value = guest_mod.ServerFacts(
        created='2026-11-28 10:00:00', image='img-base', user='u',
        project='p', launched=1764324000.0,
        flavor={'name': 'm1.small', 'memory': '2048', 'vcpus': '1',
                'disk': '20', 'swap': '0', 'ephemeral': '0'})
    _s, _h, body = call(application, 'GET', '/v2.1/servers/' + UUID,
                        version='2.47')
    server = body['server']
    assert server['image']['id'] == 'img-base'
    assert server['created'] == '2026-11-28T10:00:00Z'
    assert server['OS-SRV-USG:launched_at'] == '2025-11-28T10:00:00Z'
    assert (server['tenant_id'], server['user_id']) == ('p', 'u')
    assert server['flavor']['original_name'] == 'm1.small'
    assert (server['flavor']['ram'], server['flavor']['disk']) == (2048, 20)


def test_nova_metadata_is_read_from_the_domain():
    domain = mock.Mock()
    domain.XMLDesc.return_value = """<domain id='3'><name>vm</name>
      <metadata><nova:instance
          xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
        <nova:creationTime>2026-11-28 10:00:00</nova:creationTime>
        <nova:flavor name="m1.tiny"><nova:memory>512</nova:memory>
          <nova:vcpus>1</nova:vcpus></nova:flavor>
        <nova:owner><nova:user uuid="u1">alice</nova:user>
          <nova:project uuid="p1">alpha</nova:project></nova:owner>
        <nova:root type="image" uuid="i1"/>
      </nova:instance></metadata></domain>"""
    facts = guest_mod.Guest(domain).facts()
    assert (facts.created, facts.image, facts.user, facts.project) == (
        '2026-11-28 10:00:00', 'i1', 'u1', 'p1')
    assert facts.flavor == {'name': 'm1.tiny', 'memory': '512',
                            'vcpus': '1'}
    assert guest_mod.Guest(domain).owner_project() == 'p1'


def test_power_actions_run_in_the_background_from_the_right_status():
    application, manager, guest = make_app()
    path = '/v2.1/servers/%s/action' % UUID
    status, _h, _b = call(application, 'POST', path, {'os-stop': None})
    assert status == 202
    manager.power.assert_called_once_with(mock.ANY, mock.ANY, 'stop',
                                          'ACTIVE')
    status, _h, body = call(application, 'POST', path, {'unpause': None})
    assert status == 409
    assert "Cannot 'unpause'" in body['conflictingRequest']['message']
    status, _h, _b = call(application, 'POST', path, {'pause': {'x': 1}})
    assert status == 400
    guest.state.return_value = guest_mod.SHUTOFF
    guest.has_managed_save.return_value = False
    status, _h, _b = call(application, 'POST', path, {'os-start': None})
    assert status == 202


def test_power_actions_nova_refuses_are_refused():
    application, manager, guest = make_app()
    path = '/v2.1/servers/%s/action' % UUID
    guest.state.return_value = guest_mod.PAUSED
    assert call(application, 'POST', path, {'os-stop': None})[0] == 409
    guest.state.return_value = guest_mod.SUSPENDED   # suspended itself
    assert call(application, 'POST', path, {'os-start': None})[0] == 409
    guest.state.return_value = guest_mod.RUNNING
    guest.is_persistent.return_value = False
    assert call(application, 'POST', path, {'os-stop': None})[0] == 409
    manager.power.assert_not_called()
