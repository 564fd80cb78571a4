"""Fixtures for tests against a real libvirtd, real guests and real Glance.

Nothing here is mocked; the shared fixtures (libvirt connection, Glance,
guests' scratch space, queued images) are in tests/fixtures.py.
"""

import os
import shutil
import subprocess
import tempfile

import pytest
from stevedore import driver as stevedore_driver

from tests.fixtures import LIBVIRT_URI
from tests.functional import service as service_mod
from tests.functional import testguest
from vmsnap_driver import config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


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


class PrivateGlance:
    """Another real local Glance (tools/glance-local), a test's own."""

    SCRIPT = os.path.join(REPO, 'tools', 'glance-local')

    def __init__(self, workroot, name, port, **env):
        self.url = 'http://127.0.0.1:%d' % port
        self.dir = os.path.join(workroot, 'glance-' + name)
        self.env = dict(os.environ, VMSNAP_GLANCE_DIR=self.dir,
                        VMSNAP_GLANCE_PORT=str(port), **env)

    def start(self):
        subprocess.run([self.SCRIPT, 'start'], env=self.env, check=True)
        return self

    def stop(self):
        subprocess.run([self.SCRIPT, 'stop'], env=self.env, check=False)

    def kill(self):
        """SIGKILL its processes, as a crash would."""
        pidfile = os.path.join(self.dir, 'gunicorn.pid')
        with open(pidfile) as f:
            master = f.read().strip()
        subprocess.run('kill -9 $(pgrep -P %s) %s' % (master, master),
                       shell=True, check=False)
        os.unlink(pidfile)


@pytest.fixture
def private_glance(workroot):
    """Start Glances of a test's own; all are stopped after it."""
    started = []

    def start(name, port, **env):
        glance = PrivateGlance(workroot, name, port, **env).start()
        started.append(glance)
        return glance
    yield start
    for glance in started:
        glance.stop()


@pytest.fixture
def refusing_glance(private_glance):
    """A second real Glance that refuses any image over 64 KiB (413)."""
    return private_glance('capped', 9393, VMSNAP_GLANCE_IMAGE_SIZE_CAP=str(
        64 * 1024)).url


@pytest.fixture
def service(workroot, glance_url):
    """Start a vmsnap-compute with extra config sections; stop it after."""
    started = []

    def start(wait=True, **sections):
        svc = service_mod.Service(workroot, glance_url, **sections)
        started.append(svc)
        return svc.start(wait=wait)
    yield start
    for svc in started:
        svc.stop()
        shutil.rmtree(svc.dir, ignore_errors=True)
