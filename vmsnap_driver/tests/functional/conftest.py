"""Fixtures for tests against a real libvirtd, real guests and real Glance.

Nothing here is mocked.  libvirtd must answer on qemu:///system and a Glance
API must answer at $VMSNAP_TEST_GLANCE_URL (default http://127.0.0.1:9292):
``tools/setup-host`` prepares both.  A missing service fails the run
instead of skipping it, so a green run always means the real path worked.
"""

import os
import shutil
import subprocess
import tempfile
import urllib.request

import glanceclient
import libvirt
import pytest
from stevedore import driver as stevedore_driver

from vmsnap_driver import config
from vmsnap_driver.tests.functional import testguest

GLANCE_URL = os.environ.get('VMSNAP_TEST_GLANCE_URL',
                            'http://127.0.0.1:9292')
LIBVIRT_URI = 'qemu:///system'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + '/versions', timeout=5).read()
    except OSError:
        return False
    return True


@pytest.fixture(scope='session')
def conn():
    try:
        connection = libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        pytest.fail('libvirtd does not answer on %s (%s): run '
                    'tools/setup-host first' % (LIBVIRT_URI, e))
    yield connection
    connection.close()


@pytest.fixture(scope='session')
def glance_url():
    if not _answers(GLANCE_URL):
        pytest.fail('No Glance API answers at %s: run tools/setup-host '
                    '(or tools/glance-local start) first' % GLANCE_URL)
    return GLANCE_URL


@pytest.fixture(scope='session')
def glance(glance_url):
    return glanceclient.Client('2', endpoint=glance_url)


@pytest.fixture(scope='session')
def workroot():
    """Scratch space QEMU (user libvirt-qemu) can reach: /tmp is 0700."""
    path = tempfile.mkdtemp(prefix='vmsnap-functional-', dir='/var/tmp')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='session')
def guest_kit():
    return testguest.guest_kit()


@pytest.fixture
def conf(glance_url, workroot):
    """The global CONF, pointed at this host's libvirtd and Glance."""
    conf = config.CONF
    state = tempfile.mkdtemp(dir=workroot, prefix='state-')
    os.chmod(state, 0o755)
    conf.set_override('state_path', state)
    conf.set_override('lock_path', os.path.join(state, 'lock'),
                      group='oslo_concurrency')
    conf.set_override('connection_uri', LIBVIRT_URI, group='libvirt')
    conf.set_override('auth_type', 'none', group='glance')
    conf.set_override('endpoint_override', glance_url, group='glance')
    yield conf
    conf.reset()


@pytest.fixture
def load_driver(conf):
    """Load the driver as a compute service does, through its entry point."""
    def load():
        return stevedore_driver.DriverManager(
            'vmsnap.compute_drivers', conf.compute_driver,
            invoke_on_load=True).driver
    return load


@pytest.fixture
def make_guest(conn, workroot, guest_kit):
    guests = []

    def make(**kwargs):
        guest = testguest.TestGuest(
            conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'), **kwargs)
        guests.append(guest)
        return guest
    yield make
    for guest in guests:
        guest.destroy()


@pytest.fixture
def queued_image(glance):
    """Images created as Nova's API does before calling the driver."""
    created = []

    def create(name='vmsnap functional test'):
        image = glance.images.create(name=name)
        created.append(image['id'])
        return image['id']
    yield create
    for image_id in created:
        try:
            glance.images.delete(image_id)
        except Exception:
            pass


@pytest.fixture
def refusing_glance(workroot):
    """A second real Glance that refuses any image over 64 KiB (413)."""
    env = dict(os.environ,
               VMSNAP_GLANCE_DIR=os.path.join(workroot, 'glance-capped'),
               VMSNAP_GLANCE_PORT='9393',
               VMSNAP_GLANCE_IMAGE_SIZE_CAP=str(64 * 1024))
    script = os.path.join(REPO, 'tools', 'glance-local')
    subprocess.run([script, 'start'], env=env, check=True)
    yield 'http://127.0.0.1:9393'
    subprocess.run([script, 'stop'], env=env, check=False)
