"""vmsnap-compute behind a real Keystone, with a Keystone-backed Glance.

Keystone (PyPI, tools/keystone-local) seeds projects alpha and beta: alice
is a member of alpha, carol a reader of alpha, bob a member of beta.  The
guest belongs to alpha, as Nova records it in the domain's metadata.
"""

import json
import os
import subprocess

from keystoneauth1.identity import v3
from keystoneauth1 import session as ks_session
import pytest

from tests.functional import service as service_mod

PASSWORD = os.environ.get('VMSNAP_KEYSTONE_PASSWORD', 'vmsnap-test')
GLANCE_PORT = '9494'


@pytest.fixture(scope='module')
def keystone(workroot):
    """A Keystone and a Glance that authenticates with it."""
    subprocess.run([os.path.join(service_mod.REPO, 'tools',
                                 'keystone-local'), 'start'], check=True)
    url = subprocess.run([os.path.join(service_mod.REPO, 'tools',
                                       'keystone-local'), 'url'],
                         check=True, capture_output=True,
                         text=True).stdout.strip()
    env = dict(os.environ,
               VMSNAP_GLANCE_DIR=os.path.join(workroot, 'glance-keystone'),
               VMSNAP_GLANCE_PORT=GLANCE_PORT,
               VMSNAP_GLANCE_KEYSTONE_URL=url)
    script = os.path.join(service_mod.REPO, 'tools', 'glance-local')
    subprocess.run([script, 'start'], env=env, check=True)
    yield {'url': url, 'glance': 'http://127.0.0.1:' + GLANCE_PORT}
    subprocess.run([script, 'stop'], env=env, check=False)


def session_of(keystone, user, project):
    return ks_session.Session(auth=v3.Password(
        auth_url=keystone['url'], username=user, password=PASSWORD,
        project_name=project, user_domain_id='default',
        project_domain_id='default'))


@pytest.fixture(scope='module')
def sessions(keystone):
    return {name: session_of(keystone, name, project) for name, project in
            [('alice', 'alpha'), ('carol', 'alpha'), ('bob', 'beta'),
             ('admin', 'admin')]}


@pytest.fixture
def secured(service, keystone):
    auth = {'auth_type': 'password', 'auth_url': keystone['url'],
            'username': 'vmsnap', 'password': PASSWORD,
            'project_name': 'service', 'user_domain_id': 'default',
            'project_domain_id': 'default'}
    return service(
        api={'auth_strategy': 'keystone'},
        keystone_authtoken=dict(auth, www_authenticate_uri=keystone['url']),
        glance=dict(auth, endpoint_override=keystone['glance']))


def call(svc, sess, method, path, body=None):
    response = sess.request(svc.url + path, method, json=body,
                            raise_exc=False,
                            headers={'OpenStack-API-Version':
                                     'compute 2.45'})
    return response.status_code, (response.json() if response.content
                                  else None)


def test_each_project_reaches_only_its_own_servers(
        secured, sessions, keystone, make_guest):
    alpha = sessions['alice'].get_project_id()
    guest = make_guest(owner=alpha)
    guest.start()
    server = '/v2.1/servers/' + guest.uuid
    action = server + '/action'
    snapshot = {'createImage': {'name': 'alice snapshot'}}

    # Another project: the server does not exist, for reading or acting.
    assert call(secured, sessions['bob'], 'GET', server)[0] == 404
    assert call(secured, sessions['bob'], 'POST', action, snapshot)[0] == 404
    assert call(secured, sessions['bob'], 'POST', action, {
        'rebuild': {'imageRef': guest.uuid}})[0] == 404
    _status, listed = call(secured, sessions['bob'], 'GET', '/v2.1/servers')
    assert guest.uuid not in [s['id'] for s in listed['servers']]
    # A reader of its project sees it but may not snapshot it.
    assert call(secured, sessions['carol'], 'GET', server)[0] == 200
    assert call(secured, sessions['carol'], 'POST', action,
                snapshot)[0] == 403
    assert call(secured, sessions['admin'], 'GET', server)[0] == 200

    # Its member snapshots it with the real client; the image is created
    # with alice's token, so it belongs to alpha.
    env = dict(os.environ, OS_AUTH_URL=keystone['url'], OS_USERNAME='alice',
               OS_PASSWORD=PASSWORD, OS_PROJECT_NAME='alpha',
               OS_USER_DOMAIN_ID='default', OS_PROJECT_DOMAIN_ID='default',
               OS_COMPUTE_ENDPOINT_OVERRIDE=secured.url + '/v2.1',
               OS_IMAGE_ENDPOINT_OVERRIDE=keystone['glance'])
    result = subprocess.run(
        [os.path.join(service_mod.BIN, 'openstack'), 'server', 'image',
         'create', guest.uuid, '--name', 'alice snapshot', '--wait',
         '-f', 'json'], env=env, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr + secured.log_text()[-3000:]
    image = json.loads(result.stdout)
    assert image['status'] == 'active'
    assert image['owner'] == alpha
    assert image['visibility'] == 'private'
    glance = sessions['alice'].request(
        keystone['glance'] + '/v2/images/' + image['id'], 'DELETE',
        raise_exc=False)
    assert glance.status_code == 204
