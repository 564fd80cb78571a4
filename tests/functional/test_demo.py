"""The README's first command, as a new user runs it: twice, then the next
steps it prints, then its teardown.

The demo gets a Glance, a port, a guest name and a bin directory of its own
here (the variables tools/demo reads), so that it neither meets the tests'
Glance nor a demo a developer left running; it installs into the usual
/opt/vmsnap/venv.
"""

import json
import os
import subprocess
import uuid

import libvirt

from tests.functional import service as service_mod

REPO = service_mod.REPO


def test_the_demo_twice_then_its_next_steps_then_stop(workroot, conn):
    demo = os.path.join(workroot, 'demo')
    bindir = os.path.join(workroot, 'demo-bin')
    os.makedirs(bindir)
    guest = 'vmsnap-demo-' + uuid.uuid4().hex[:6]
    env = dict(os.environ, VMSNAP_DEMO_DIR=demo, VMSNAP_BIN_DIR=bindir,
               VMSNAP_DEMO_GUEST=guest,
               VMSNAP_DEMO_PORT=str(service_mod._free_port()),
               VMSNAP_GLANCE_DIR=os.path.join(workroot, 'glance-demo'),
               VMSNAP_GLANCE_PORT='9797')

    def run(*args):
        return subprocess.run([os.path.join(REPO, 'tools', 'demo')]
                              + list(args), cwd='/', env=env, text=True,
                              capture_output=True, timeout=900)
    try:
        first = run()
        assert first.returncode == 0, first.stdout + first.stderr
        assert 'status: active' in first.stdout
        assert 'source %s/openrc' % demo in first.stdout
        # No alarming libvirt lines while it looks for its guest.
        assert 'Domain not found' not in first.stdout + first.stderr
        uuid_first = conn.lookupByName(guest).UUIDString()

        second = run()
        assert second.returncode == 0, second.stdout + second.stderr
        assert 'vmsnap-compute already runs' in second.stdout
        assert 'Building' not in second.stdout
        assert conn.lookupByName(guest).UUIDString() == uuid_first

        # What it printed to try next, with the commands it linked and the
        # environment its openrc holds.
        client = dict(os.environ, PATH=bindir + ':' + os.environ['PATH'])
        with open(os.path.join(demo, 'openrc')) as f:
            for line in f.read().replace('export ', '').split():
                key, _sep, value = line.partition('=')
                client[key] = value

        def openstack(*args):
            done = subprocess.run(['openstack'] + list(args) + ['-f', 'json'],
                                  env=client, text=True, capture_output=True,
                                  timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            # --wait writes its progress to standard output first.
            return json.loads(done.stdout[done.stdout.index('{'):])
        shown = openstack('server', 'show', guest)
        assert (shown['name'], shown['status']) == (guest, 'ACTIVE')
        before = openstack('server', 'image', 'create', guest, '--name',
                           'before', '--property', 'vmsnap_memory=true',
                           '--wait')
        assert before['status'] == 'active'
        openstack('server', 'rebuild', guest, '--image', 'before', '--wait')
        assert openstack('server', 'show', guest)['status'] == 'ACTIVE'
        assert conn.lookupByName(guest).state()[0] == (
            libvirt.VIR_DOMAIN_RUNNING)
    finally:
        stopped = run('stop')
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert guest not in [d.name() for d in conn.listAllDomains(0)]
    assert not os.path.exists(os.path.join(demo, 'vmsnap-compute.pid'))
