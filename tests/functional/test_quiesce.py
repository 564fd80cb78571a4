"""Quiesced snapshots of a real guest running Debian's qemu-guest-agent.

The guest rewrites and fsyncs a counter on ext4 twice a second; libvirt
freezes that filesystem through the agent for the instant of capture.
"""

import json
import tempfile
import time

import libvirt
import libvirt_qemu
import pytest

from tests.functional import checks
from tests.functional import testguest
from vmsnap_driver import exception


def wait_for_agent(guest, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_qemu.qemuAgentCommand(
                guest.dom, json.dumps({'execute': 'guest-ping'}), 5, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise AssertionError('the guest agent never answered:\n'
                                     + guest.console_text()[-2000:])
            time.sleep(0.5)


def stop_agent(guest):
    """SIGSTOP qemu-ga inside the guest: it then never answers again."""
    libvirt_qemu.qemuAgentCommand(guest.dom, json.dumps({
        'execute': 'guest-exec',
        'arguments': {'path': '/bin/sh', 'arg': [
            '-c', 'sleep 0.5; kill -STOP $(cat /tmp/qga.pid)']}}), 5, 0)
    time.sleep(1.5)


@pytest.fixture
def agent_guest(conn, workroot, guest_kit):
    guest = testguest.TestGuest(
        conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'), agent=True)
    guest.start()
    wait_for_agent(guest)
    yield guest
    guest.destroy()


def test_quiesced_snapshot_needs_no_journal_replay(
        conf, load_driver, agent_guest, queued_image, glance, workroot):
    xml = agent_guest.inactive_xml()
    image_id = queued_image()
    window = checks.guest_snapshot(load_driver(), agent_guest, image_id)

    image, counter = checks.assert_image_holds(
        glance, image_id, agent_guest, workroot, window,
        consistency='filesystem-frozen')
    assert 0 < float(image['vmsnap_freeze_seconds']) < 1
    # Thawed: the guest goes on writing its counter.
    agent_guest.wait_counter_above(counter + 1)
    checks.assert_guest_untouched(agent_guest, xml,
                                  libvirt.VIR_DOMAIN_RUNNING)


def test_required_quiesce_without_agent_fails_before_touching_guest(
        conf, load_driver, make_guest, queued_image, glance):
    guest = make_guest()
    guest.start()
    xml = guest.inactive_xml()
    image_id = queued_image()
    instance = checks.Instance(
        guest, system_metadata={'image_os_require_quiesce': 'yes'})
    with pytest.raises(exception.QuiesceUnavailable) as err:
        load_driver().snapshot(None, instance, image_id)
    assert 'os_require_quiesce' in str(err.value)
    assert glance.images.get(image_id)['status'] == 'queued'
    checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)
    checks.assert_no_leftovers(conf)


def test_hung_agent_never_leaves_guest_frozen(
        conf, load_driver, agent_guest, queued_image, glance, workroot):
    conf.set_override('quiesce_timeout', 2, group='libvirt')
    xml = agent_guest.inactive_xml()
    stop_agent(agent_guest)

    # Required: the snapshot fails, says so, and the guest runs on.
    conf.set_override('quiesce', 'required', group='libvirt')
    image_id = queued_image()
    with pytest.raises(exception.QuiesceFailed) as err:
        load_driver().snapshot(None, checks.Instance(agent_guest), image_id)
    assert 'A thaw was sent' in str(err.value)
    assert glance.images.get(image_id)['status'] == 'queued'
    checks.assert_no_leftovers(conf)
    agent_guest.wait_counter_above(agent_guest.last_counter() + 1)

    # auto: a crash-consistent snapshot instead, recorded as such.
    conf.set_override('quiesce', 'auto', group='libvirt')
    image_id = queued_image()
    window = checks.guest_snapshot(load_driver(), agent_guest, image_id)
    image, counter = checks.assert_image_holds(
        glance, image_id, agent_guest, workroot, window)
    assert image['vmsnap_freeze_seconds'] == '0.000'
    agent_guest.wait_counter_above(counter + 1)
    checks.assert_guest_untouched(agent_guest, xml,
                                  libvirt.VIR_DOMAIN_RUNNING)
