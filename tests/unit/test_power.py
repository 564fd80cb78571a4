"""Stopping is a clean shutdown, then a power-off when the time is up."""

from unittest import mock

from vmsnap_driver import guest as guest_mod
from vmsnap_driver import power


def test_a_guest_that_shuts_down_is_not_powered_off():
    guest = mock.Mock()
    guest.state.side_effect = [guest_mod.RUNNING, guest_mod.RUNNING,
                               guest_mod.SHUTOFF]
    with mock.patch.object(power.time, 'sleep'):
        power.power_off(guest, timeout=60)
    guest.shutdown.assert_called_once_with()
    guest.destroy.assert_not_called()


def test_a_guest_that_does_not_listen_is_powered_off_in_time():
    guest = mock.Mock()
    guest.state.return_value = guest_mod.RUNNING
    clock = iter(range(0, 1000, 10))
    with mock.patch.object(power.time, 'sleep'), mock.patch.object(
            power.time, 'monotonic', lambda: next(clock)):
        power.power_off(guest, timeout=30)
    guest.shutdown.assert_called_once_with()
    guest.destroy.assert_called_once_with()


def test_a_paused_guest_is_powered_off_at_once():
    guest = mock.Mock()
    guest.state.return_value = guest_mod.PAUSED
    power.power_off(guest, timeout=30)
    guest.shutdown.assert_not_called()
    guest.destroy.assert_called_once_with()
