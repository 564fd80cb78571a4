"""vmsnap-compute driven by the real ``openstack`` client.

The service runs as its own process (the console script), against this
host's libvirtd and the local Glance; the client talks to it without
Keystone (OS_AUTH_TYPE=none, endpoint overrides), as an operator would.
"""

import json
import os
import subprocess
import tempfile
import time

import libvirt

from tests.functional import checks


def test_server_show(service, running_guest):
    svc = service()
    shown = json.loads(svc.openstack('server', 'show', running_guest.name,
                                     '-f', 'json').stdout)
    assert shown['id'] == running_guest.uuid
    assert shown['name'] == running_guest.name
    assert shown['status'] == 'ACTIVE'
    assert shown['OS-EXT-STS:vm_state'] == 'active'
    assert shown['OS-EXT-STS:task_state'] is None
    # A guest on a local file was not booted from a volume: the client
    # shows its disk; and what the domain holds survives a restart.
    assert shown['image'] == 'disk.qcow2'
    assert shown['OS-SRV-USG:launched_at']
    svc.stop()
    svc.start()
    again = json.loads(svc.openstack('server', 'show', running_guest.name,
                                     '-f', 'json').stdout)
    for field in ('created', 'OS-SRV-USG:launched_at', 'updated', 'image',
                  'flavor'):
        assert again[field] == shown[field], field


def test_image_create_waits_for_active_image_with_guest_data(
        service, running_guest, glance, workroot, glance_url):
    svc = service()
    xml = running_guest.inactive_xml()
    before = running_guest.last_counter()
    created = json.loads(svc.openstack(
        'server', 'image', 'create', running_guest.name, '--name',
        'osc-snapshot', '--property', 'purpose=functional-test', '--wait',
        '-f', 'json').stdout)
    after = running_guest.last_counter()

    assert created['status'] == 'active'
    image = glance.images.get(created['id'])
    assert image['name'] == 'osc-snapshot'
    assert image['purpose'] == 'functional-test'
    checks.assert_image_holds(glance, created['id'], running_guest,
                              workroot, (before, after))
    checks.assert_guest_untouched(running_guest, xml,
                                  libvirt.VIR_DOMAIN_RUNNING)
    glance.images.delete(created['id'])


def test_second_snapshot_while_one_runs_is_409(service, running_guest,
                                               glance):
    # Throttle the copy so that the first snapshot is still running.
    svc = service(libvirt={'snapshot_mode': 'live',
                           'use_backup_api': 'false',
                           'block_copy_bandwidth': 1})
    path = '/v2.1/servers/%s/action' % running_guest.uuid
    body = {'createImage': {'name': 'first'}}
    headers = {'OpenStack-API-Version': 'compute 2.45'}
    status, hdrs, first = svc.request('POST', path, body, headers)
    assert status == 202, first
    assert hdrs['Location'].endswith('/v2/images/' + first['image_id'])
    assert hdrs['OpenStack-API-Version'] == 'compute 2.45'
    status, _hdrs, second = svc.request('POST', path, body, headers)
    assert status == 409
    assert 'already has a snapshot or rebuild in progress' in (
        second['conflictingRequest']['message'])

    _status, _hdrs, shown = svc.request(
        'GET', '/v2.1/servers/' + running_guest.uuid)
    assert shown['server']['OS-EXT-STS:task_state'] is not None
    assert shown['server']['status'] == 'ACTIVE'
    # The task ends once the driver returns, just after the image is
    # active.
    deadline = time.monotonic() + 120
    while shown['server']['OS-EXT-STS:task_state'] is not None:
        assert time.monotonic() < deadline, svc.log_text()
        time.sleep(0.5)
        _status, _hdrs, shown = svc.request(
            'GET', '/v2.1/servers/' + running_guest.uuid)
    assert glance.images.get(first['image_id'])['status'] == 'active'
    assert 'fault' not in shown['server']
    glance.images.delete(first['image_id'])


def test_failed_snapshot_fails_the_client_and_leaves_a_fault(
        service, make_guest, glance):
    # live is impossible for a shut-off guest: the snapshot must fail.
    guest = make_guest()
    svc = service(libvirt={'snapshot_mode': 'live'})
    result = svc.openstack('server', 'image', 'create', guest.name,
                           '--name', 'doomed', '--wait', check=False)
    assert result.returncode != 0
    assert not [i for i in glance.images.list() if i['name'] == 'doomed']
    shown = json.loads(svc.openstack('server', 'show', guest.name,
                                     '-f', 'json').stdout)
    assert 'SnapshotUnsupported' in shown['fault']['message']
    assert 'snapshot_mode = auto or cold' in shown['fault']['message']
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF


def test_sigterm_lets_running_snapshot_finish(service, running_guest,
                                              glance):
    svc = service(libvirt={'snapshot_mode': 'live',
                           'use_backup_api': 'false',
                           'block_copy_bandwidth': 1})
    status, _hdrs, body = svc.request(
        'POST', '/v2.1/servers/%s/action' % running_guest.uuid,
        {'createImage': {'name': 'in-flight'}},
        {'OpenStack-API-Version': 'compute 2.45'})
    assert status == 202
    time.sleep(0.5)
    assert svc.stop() == 0
    assert glance.images.get(body['image_id'])['status'] == 'active'
    assert 'running ones finish' in svc.log_text()
    assert running_guest.state() == libvirt.VIR_DOMAIN_RUNNING
    assert running_guest.dom.blockJobInfo('vda', 0) == {}
    glance.images.delete(body['image_id'])


def test_malformed_requests_get_nova_faults(service, running_guest):
    svc = service()
    action = '/v2.1/servers/%s/action' % running_guest.uuid
    cases = [
        ('POST', action, b'{not json', 400, 'badRequest'),
        ('POST', action, {'reboot': {}}, 400, 'badRequest'),
        ('POST', action, {'createImage': {}}, 400, 'badRequest'),
        ('POST', action, {'createImage': {'name': 'x' * 256}}, 400,
         'badRequest'),
        ('POST', action, {'createImage': {'name': 'a', 'metadata': {
            'k': 1}}}, 400, 'badRequest'),
        ('GET', '/v2.1/servers/not-a-server', None, 404, 'itemNotFound'),
        ('POST', '/v2.1/servers/%s/action' % ('0' * 8 + '-0000-4000-8000-'
                                              + '0' * 12),
         {'createImage': {'name': 'a'}}, 404, 'itemNotFound'),
        ('DELETE', '/v2.1/servers/' + running_guest.uuid, None, 405,
         'badMethod'),
        ('GET', '/v2.1/flavors', None, 404, 'itemNotFound'),
    ]
    for method, path, body, code, fault in cases:
        status, _hdrs, answer = svc.request(method, path, body)
        assert (status, list(answer)) == (code, [fault]), (method, path)
    status, _hdrs, answer = svc.request(
        'GET', '/v2.1/servers', headers={'OpenStack-API-Version':
                                         'compute 2.99'})
    assert status == 406
    # Still serving.
    status, _hdrs, answer = svc.request('GET', '/v2.1/servers?name=' +
                                        running_guest.name)
    assert status == 200
    assert [s['id'] for s in answer['servers']] == [running_guest.uuid]


def test_keystone_strategy_rejects_requests_without_token(service):
    svc = service(api={'auth_strategy': 'keystone'},
                  keystone_authtoken={
                      'www_authenticate_uri': 'http://127.0.0.1:5000/v3',
                      'auth_url': 'http://127.0.0.1:5000/v3'})
    status, hdrs, _body = svc.request('GET', '/v2.1/servers')
    assert status == 401
    assert 'Keystone uri' in hdrs.get('WWW-Authenticate', '')


def test_noauth_refuses_non_loopback_address(service):
    svc = service(wait=False, api={'host': '0.0.0.0'})
    assert svc.proc.wait(timeout=30) == 2
    assert 'allow_noauth_remote' in svc.log_text()


def test_the_clients_power_verbs_drive_the_guest(service, make_guest):
    """stop, start, pause, unpause, as Nova maps them to libvirt."""
    guest = make_guest()
    guest.start()
    # The test guest has no ACPI: a stop powers it off after the timeout.
    svc = service(DEFAULT={'shutdown_timeout': 2})

    def status_becomes(status, libvirt_state):
        deadline = time.monotonic() + 60
        while True:
            shown = svc.request('GET', '/v2.1/servers/' + guest.uuid)[2][
                'server']
            if (shown['status'], shown['OS-EXT-STS:task_state']) == (
                    status, None):
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert guest.state() == libvirt_state

    svc.openstack('server', 'pause', guest.name)
    status_becomes('PAUSED', libvirt.VIR_DOMAIN_PAUSED)
    svc.openstack('server', 'unpause', guest.name)
    status_becomes('ACTIVE', libvirt.VIR_DOMAIN_RUNNING)
    svc.openstack('server', 'stop', guest.name)
    status_becomes('SHUTOFF', libvirt.VIR_DOMAIN_SHUTOFF)
    refused = svc.openstack('server', 'stop', guest.name, check=False)
    assert refused.returncode != 0 and "Cannot 'stop'" in refused.stderr
    svc.openstack('server', 'start', guest.name)
    status_becomes('ACTIVE', libvirt.VIR_DOMAIN_RUNNING)


def test_progress_rises_through_the_upload(service, make_guest, workroot,
                                           glance):
    """The server's ``progress`` counts bytes while a snapshot runs."""
    workdir = tempfile.mkdtemp(dir=workroot, prefix='disk-')
    os.chmod(workdir, 0o755)
    path = os.path.join(workdir, 'disk.raw')
    # Random data: nothing to skip, the upload takes seconds.
    subprocess.run(['dd', 'if=/dev/urandom', 'of=' + path, 'bs=1M',
                    'count=384', 'status=none'], check=True)
    guest = make_guest(disk={'path': path, 'format': 'raw'})
    guest.start()
    svc = service()
    image_id = svc.start_snapshot(guest, 'progress')
    seen = []
    deadline = time.monotonic() + 120
    while True:
        server = svc.request('GET', '/v2.1/servers/' + guest.uuid)[2][
            'server']
        if server['OS-EXT-STS:task_state'] is None:
            break
        seen.append(server['progress'])
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
    assert glance.images.get(image_id)['status'] == 'active'
    glance.images.delete(image_id)
    assert seen == sorted(seen), seen
    between = {value for value in seen if 25 < value < 99}
    assert len(between) >= 3, seen
    assert 'MiB/s' in svc.log_text()
