"""Stop, start, pause and unpause a guest, as Nova's libvirt driver does.

The client's everyday verbs on the servers vmsnap-compute shows.  Stopping
is Nova's clean shutdown: the guest is asked to shut down (ACPI) and given
``shutdown_timeout`` seconds, then powered off; a guest without ACPI is
powered off when the time is up.  Starting a guest with a managed save
resumes it, as ``virsh start`` does.
"""

import time

from oslo_log import log as logging

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod

LOG = logging.getLogger(__name__)

POLL_INTERVAL = 0.5


def power_off(guest: guest_mod.Guest, timeout: float) -> None:
    if guest.state() == guest_mod.SHUTOFF:
        return
    if timeout > 0 and guest.state() == guest_mod.RUNNING:
        guest.shutdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if guest.state() == guest_mod.SHUTOFF:
                LOG.info('Guest shut down', instance_uuid=guest.uuid)
                return
            time.sleep(POLL_INTERVAL)
        LOG.info('Guest did not shut down within %s s: powered off',
                 timeout, instance_uuid=guest.uuid)
    try:
        guest.destroy()
    except exception.HypervisorError:
        if guest.state() != guest_mod.SHUTOFF:
            raise
        # It shut down on its own at that very moment.


def power_on(guest: guest_mod.Guest) -> None:
    if guest.state() == guest_mod.SHUTOFF:
        guest.launch()


def pause(guest: guest_mod.Guest) -> None:
    if guest.state() == guest_mod.RUNNING:
        guest.pause()


def unpause(guest: guest_mod.Guest) -> None:
    if guest.state() == guest_mod.PAUSED:
        guest.resume()
