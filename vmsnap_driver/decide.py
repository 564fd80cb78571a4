"""Which capture to use: a pure function of config, host and guest.

Kept apart from the captures themselves so that every branch of the choice
is testable without a hypervisor, and so that the log line explaining the
choice comes from one place.
"""

import dataclasses
from typing import List, Optional

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import host as host_mod
from vmsnap_driver import qemu_img

LIVE = 'live'
COLD = 'cold'
AUTO = 'auto'

# VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB, which lets a persistent domain stay
# defined during the copy, appeared in libvirt 4.5.0.
MIN_LIBVIRT_LIVE = (4, 5, 0)
# libvirt drives block copy through QEMU's blockdev layer from QEMU 4.2 on;
# older QEMUs mirror a shallow copy less reliably.
MIN_QEMU_LIVE = (4, 2, 0)

COLD_STATES = (guest_mod.RUNNING, guest_mod.PAUSED, guest_mod.SHUTOFF)


@dataclasses.dataclass(frozen=True)
class Decision:
    mode: str
    reason: str


def _disk_problem(disk: guest_mod.Disk) -> Optional[str]:
    if disk.source_type != 'file' or not disk.path:
        return ('disk %s is a %s disk; vmsnap captures file-backed disks '
                'only' % (disk.target, disk.source_type))
    if disk.format not in qemu_img.FORMATS:
        return ('disk %s is in format %s; vmsnap captures %s disks'
                % (disk.target, disk.format, ' and '.join(qemu_img.FORMATS)))
    return None


def _live_problem(caps: host_mod.Capabilities, state: str) -> Optional[str]:
    if caps.hypervisor != 'QEMU':
        return 'the hypervisor is %s, not QEMU' % caps.hypervisor
    version = host_mod.version_string
    if caps.libvirt_version < MIN_LIBVIRT_LIVE:
        return ('libvirt %s cannot keep the domain defined during a block '
                'copy (needs %s)' % (version(caps.libvirt_version),
                                     version(MIN_LIBVIRT_LIVE)))
    if caps.hypervisor_version < MIN_QEMU_LIVE:
        return 'QEMU %s is older than %s' % (
            version(caps.hypervisor_version), version(MIN_QEMU_LIVE))
    if state not in guest_mod.ACTIVE_STATES:
        return 'the guest is %s, not running or paused' % state
    return None


def choose(requested: str, caps: host_mod.Capabilities, state: str,
           disks: List[guest_mod.Disk], instance_uuid: str,
           backup: bool = True, memory: bool = False) -> Decision:
    """Pick live or cold for this snapshot, or raise SnapshotUnsupported.

    :param backup: the backup API is available and enabled; without it,
        several disks cannot be copied live at one instant.
    :param memory: the guest's memory is captured with its disks, which
        needs the backup API to pin the disks at the memory's instant
        while the guest runs on.
    """
    for disk in disks:
        problem = _disk_problem(disk)
        if problem:
            raise exception.SnapshotUnsupported(
                mode=requested, instance_uuid=instance_uuid, reason=problem)
    live_problem = _live_problem(caps, state)
    if not live_problem and len(disks) > 1 and not backup:
        live_problem = ('capturing %d disks at one instant while the guest '
                        'runs needs libvirt\'s backup API' % len(disks))
    if not live_problem and memory and not backup:
        live_problem = ('capturing memory and disks at one instant while '
                        'the guest runs needs libvirt\'s backup API')
    if requested == LIVE:
        if live_problem:
            raise exception.SnapshotUnsupported(
                mode=LIVE, instance_uuid=instance_uuid,
                reason=live_problem + '. Use [libvirt] snapshot_mode = auto '
                                      'or cold.')
        return Decision(LIVE, 'snapshot_mode is live')
    if requested == AUTO and not live_problem:
        return Decision(LIVE, 'libvirt %s and QEMU %s can copy disk %s while '
                              'the guest runs'
                        % (host_mod.version_string(caps.libvirt_version),
                           host_mod.version_string(caps.hypervisor_version),
                           ', '.join(d.target for d in disks)))
    if state not in COLD_STATES:
        raise exception.SnapshotUnsupported(
            mode=COLD, instance_uuid=instance_uuid,
            reason='the guest is %s; only running, paused and shut-off '
                   'guests can be snapshotted' % state)
    if requested == COLD:
        return Decision(COLD, 'snapshot_mode is cold')
    return Decision(COLD, live_problem)
