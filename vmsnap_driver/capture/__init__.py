"""Capture strategies, picked from what :mod:`vmsnap_driver.decide` says."""

from typing import Any

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver.capture import cold
from vmsnap_driver.capture import live
from vmsnap_driver import host as host_mod


def get(mode: str, options: Any,
        caps: host_mod.Capabilities) -> base.Capture:
    """The capture for ``mode`` ('live' or 'cold') on this host.

    :param options: the snapshot options group (``[libvirt]`` for vmsnap's
        own service, ``[vmsnap]`` inside nova-compute).
    """
    if mode == cold.ManagedSaveCapture.mode:
        return cold.ManagedSaveCapture.from_conf(options, caps)
    if options.use_backup_api and caps.backup:
        return backup.BackupCapture.from_conf(options, caps)
    return live.BlockCopyCapture.from_conf(options, caps)
