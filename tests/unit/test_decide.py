import pytest

from vmsnap_driver import decide
from vmsnap_driver import exception
from vmsnap_driver import guest
from vmsnap_driver import host

CAPS = host.Capabilities(hypervisor='QEMU', libvirt_version=(9, 0, 0),
                         hypervisor_version=(7, 2, 0))
DISK = guest.Disk(target='vda', source_type='file', path='/d.qcow2',
                  format='qcow2', readonly=False)
UUID = 'uuid-1'


@pytest.mark.parametrize('state', [guest.RUNNING, guest.PAUSED])
def test_auto_is_live_for_an_active_guest(state):
    decision = decide.choose('auto', CAPS, state, [DISK], UUID)
    assert decision.mode == 'live'
    assert 'libvirt 9.0.0 and QEMU 7.2.0' in decision.reason


def test_auto_is_cold_for_a_shut_off_guest():
    decision = decide.choose('auto', CAPS, guest.SHUTOFF, [DISK], UUID)
    assert decision == decide.Decision('cold', 'the guest is shutoff, not '
                                               'running or paused')


@pytest.mark.parametrize('caps, reason', [
    (host.Capabilities('QEMU', (4, 4, 0), (7, 2, 0)), 'libvirt 4.4.0'),
    (host.Capabilities('QEMU', (9, 0, 0), (4, 1, 0)), 'QEMU 4.1.0'),
    (host.Capabilities('Xen', (9, 0, 0), (4, 1, 0)), 'hypervisor is Xen'),
])
def test_auto_falls_back_to_cold_on_old_hosts(caps, reason):
    decision = decide.choose('auto', caps, guest.RUNNING, [DISK], UUID)
    assert decision.mode == 'cold'
    assert reason in decision.reason


def test_live_refuses_what_it_cannot_do():
    with pytest.raises(exception.SnapshotUnsupported) as err:
        decide.choose('live', CAPS, guest.SHUTOFF, [DISK], UUID)
    assert 'snapshot_mode = auto or cold' in str(err.value)


def test_cold_is_cold_even_when_live_works():
    assert decide.choose('cold', CAPS, guest.RUNNING, [DISK], UUID).mode == (
        'cold')


@pytest.mark.parametrize('disk', [
    guest.Disk('vda', 'block', '/dev/sdb', 'raw', False),
    guest.Disk('vda', 'network', None, 'raw', False),
    guest.Disk('vda', 'file', '/d.vmdk', 'vmdk', False),
])
def test_unsupported_disks_are_refused_in_every_mode(disk):
    for mode in ('auto', 'live', 'cold'):
        with pytest.raises(exception.SnapshotUnsupported):
            decide.choose(mode, CAPS, guest.RUNNING, [disk], UUID)


def test_suspended_guests_are_refused():
    with pytest.raises(exception.SnapshotUnsupported) as err:
        decide.choose('auto', CAPS, guest.SUSPENDED, [DISK], UUID)
    assert 'suspended' in str(err.value)


def test_several_disks_live_need_the_backup_api():
    disks = [DISK, guest.Disk('vdb', 'file', '/b.qcow2', 'qcow2', False)]
    assert decide.choose('auto', CAPS, guest.RUNNING, disks, UUID).mode == (
        'live')
    decision = decide.choose('auto', CAPS, guest.RUNNING, disks, UUID,
                             backup=False)
    assert decision.mode == 'cold'
    assert 'backup API' in decision.reason
    with pytest.raises(exception.SnapshotUnsupported):
        decide.choose('live', CAPS, guest.RUNNING, disks, UUID, backup=False)
