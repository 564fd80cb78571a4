"""Capture strategies, picked from what :mod:`vmsnap_driver.decide` says."""

from typing import Any

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver.capture import cold
from vmsnap_driver.capture import live
from vmsnap_driver.capture import memory
from vmsnap_driver import host as host_mod


def get(mode: str, options: Any, caps: host_mod.Capabilities,
        memory_bytes: int = 0) -> base.Capture:
    """The capture for ``mode`` ('live' or 'cold') on this host.

    :param options: the snapshot options group (``[libvirt]`` for vmsnap's
        own service, ``[vmsnap]`` inside nova-compute).
    :param memory_bytes: the guest's RAM, when its memory is captured too
        (a live memory capture needs the backup API: decide.choose says
        cold otherwise).
    """
    if mode == cold.ManagedSaveCapture.mode:
        return cold.ManagedSaveCapture.from_conf(options, caps,
                                                 memory_bytes)
    if memory_bytes:
        return memory.MemoryCapture.from_conf(options, caps, memory_bytes)
    if options.use_backup_api and caps.backup:
        return backup.BackupCapture.from_conf(options, caps)
    return live.BlockCopyCapture.from_conf(options, caps)
