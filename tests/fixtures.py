"""Fixtures shared by the functional and the Nova tests: real parts only.

libvirtd must answer on qemu:///system and a Glance API must answer at
$VMSNAP_TEST_GLANCE_URL (default http://127.0.0.1:9292): ``tools/setup-host``
prepares both.  A missing service fails the run instead of skipping it.
Nothing here imports vmsnap's configuration, which Nova's would clash with.
"""

import os
import shutil
import tempfile
import urllib.request

import glanceclient
import libvirt
import pytest

from tests.functional import testguest

GLANCE_URL = os.environ.get('VMSNAP_TEST_GLANCE_URL',
                            'http://127.0.0.1:9292')
LIBVIRT_URI = 'qemu:///system'


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + '/versions', timeout=5).read()
    except OSError:
        return False
    return True


class _Connection:
    """libvirt's connection, opened again when libvirtd restarted.

    A test may restart libvirtd; the tests after it keep working.
    """

    def __init__(self) -> None:
        self._conn = libvirt.open(LIBVIRT_URI)

    def __getattr__(self, name):
        try:
            self._conn.getLibVersion()
        except libvirt.libvirtError:
            self._conn = libvirt.open(LIBVIRT_URI)
        return getattr(self._conn, name)


@pytest.fixture(scope='session')
def conn():
    try:
        connection = _Connection()
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


@pytest.fixture(scope='module')
def running_guest(conn, workroot, guest_kit):
    """One running guest shared by the tests of a module: none may keep it."""
    guest = testguest.TestGuest(
        conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'))
    guest.start()
    yield guest
    guest.destroy()
