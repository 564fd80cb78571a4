import types
from unittest import mock

import pytest

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import quiesce


def guest(agent=True):
    g = mock.Mock(uuid='u-1')
    g.has_agent_channel.return_value = agent
    return g


def instance(**image_props):
    return types.SimpleNamespace(uuid='u-1', system_metadata={
        'image_' + k: v for k, v in image_props.items()})


RUNNING = guest_mod.RUNNING


def test_an_agent_not_connected_is_not_asked_to_freeze():
    g = guest()
    g.agent_connected.return_value = False
    plan = quiesce.plan('auto', instance(), g, RUNNING, 'live')
    assert not plan.freeze and 'not connected' in plan.why
    with pytest.raises(exception.QuiesceUnavailable):
        quiesce.plan('required', instance(), g, RUNNING, 'live')


def test_auto_freezes_guests_with_an_agent():
    assert quiesce.plan('auto', instance(), guest(), RUNNING, 'live').freeze
    assert not quiesce.plan('auto', instance(), guest(False), RUNNING,
                            'live').freeze


def test_off_never_freezes_unless_the_image_requires_it():
    assert not quiesce.plan('off', instance(), guest(), RUNNING,
                            'live').freeze
    plan = quiesce.plan('off', instance(os_require_quiesce='yes'), guest(),
                        RUNNING, 'live')
    assert plan.freeze and plan.required


@pytest.mark.parametrize('agent, state, mode, reason', [
    (False, RUNNING, 'live', 'no org.qemu.guest_agent.0 channel'),
    (True, guest_mod.PAUSED, 'live', 'the guest is paused'),
    (True, RUNNING, 'cold', 'saves the guest instead of freezing it'),
])
def test_required_but_impossible_fails_before_touching_guest(
        agent, state, mode, reason):
    g = guest(agent)
    with pytest.raises(exception.QuiesceUnavailable) as err:
        quiesce.plan('auto', instance(os_require_quiesce='yes'), g, state,
                     mode)
    assert reason in str(err.value)
    assert 'os_require_quiesce' in str(err.value)
    g.freeze_filesystems.assert_not_called()


def test_auto_without_working_agent_is_crash_consistent():
    g = guest()
    g.freeze_filesystems.side_effect = exception.HypervisorError(
        action='freeze', instance_uuid='u-1', reason='agent timeout')
    freezer = quiesce.Freezer(g, quiesce.Plan(True, False, 'agent'), 3)
    with freezer.frozen():
        pass
    g.thaw_filesystems.assert_called_once_with()
    assert freezer.level == 'crash-consistent'


def test_required_freeze_failure_raises_after_thawing():
    g = guest()
    g.freeze_filesystems.side_effect = exception.HypervisorError(
        action='freeze', instance_uuid='u-1', reason='agent timeout')
    freezer = quiesce.Freezer(g, quiesce.Plan(True, True, 'required'), 3)
    with pytest.raises(exception.QuiesceFailed):
        with freezer.frozen():
            pytest.fail('no capture without the freeze')
    g.thaw_filesystems.assert_called_once_with()


def test_freeze_wraps_only_the_instant_and_always_thaws():
    g = guest()
    g.freeze_filesystems.return_value = 1
    freezer = quiesce.Freezer(g, quiesce.Plan(True, False, 'agent'), 3)
    with freezer.frozen():
        g.freeze_filesystems.assert_called_once_with(3)
        g.thaw_filesystems.assert_not_called()
    g.thaw_filesystems.assert_called_once_with()
    assert freezer.level == 'filesystem-frozen'
    with pytest.raises(RuntimeError):
        with freezer.frozen():
            raise RuntimeError('capture failed')
    assert g.thaw_filesystems.call_count == 2
