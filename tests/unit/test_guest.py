"""The libvirt wrapper's behaviour when libvirtd restarts or hangs."""

from unittest import mock

import libvirt
import pytest

from vmsnap_driver.cmd import compute
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod


def _domain(alive=True):
    domain = mock.Mock()
    domain.UUIDString.return_value = 'u-1'
    domain.name.return_value = 'vm'
    domain.connect.return_value.isAlive.return_value = alive
    return domain


def test_a_call_on_a_closed_connection_is_made_again_on_a_new_one():
    old, new = _domain(alive=False), _domain()
    old.abortJob.side_effect = libvirt.libvirtError('Broken pipe')
    lookup = mock.Mock(return_value=new)
    guest = guest_mod.Guest(old, lookup)
    guest._domain.abortJob()
    lookup.assert_called_once_with('u-1')
    new.abortJob.assert_called_once_with()


def test_a_call_that_changes_the_guest_is_not_repeated():
    """It may have taken effect: the caller gets the error and checks."""
    old, new = _domain(alive=False), _domain()
    old.resume.side_effect = libvirt.libvirtError('Broken pipe')
    guest = guest_mod.Guest(old, mock.Mock(return_value=new))
    with pytest.raises(exception.HypervisorError, match='resume'):
        guest.resume()
    new.resume.assert_not_called()
    guest.resume()              # the next call goes to the live connection
    new.resume.assert_called_once_with()


def test_an_error_on_a_live_connection_is_not_retried():
    domain = _domain(alive=True)
    domain.resume.side_effect = libvirt.libvirtError('not paused')
    lookup = mock.Mock()
    with pytest.raises(exception.HypervisorError):
        guest_mod.Guest(domain, lookup).resume()
    lookup.assert_not_called()


@mock.patch('time.sleep')
def test_a_block_job_abort_is_bounded(_sleep):
    domain = _domain()
    domain.blockJobInfo.return_value = {'cur': 1, 'end': 2}
    with pytest.raises(exception.HypervisorError, match='still there'):
        guest_mod.Guest(domain).abort_block_job('vda', timeout=0)
    domain.blockJobAbort.assert_called_once_with(
        'vda', libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC)


def test_recovery_passes_run_until_stopped():
    driver = mock.Mock()
    stop = mock.Mock()
    stop.wait.side_effect = [False, False, True]
    driver.recover.side_effect = [RuntimeError('libvirtd down'), []]
    compute._recover_periodically(driver, stop, 5)
    assert driver.recover.call_count == 2
    stop.wait.assert_called_with(5)
