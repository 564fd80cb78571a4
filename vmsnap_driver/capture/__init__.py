"""Capture strategies, picked from what :mod:`vmsnap_driver.decide` says."""

from oslo_config import cfg

from vmsnap_driver.capture import backup
from vmsnap_driver.capture import base
from vmsnap_driver.capture import cold
from vmsnap_driver.capture import live
from vmsnap_driver import host as host_mod


def get(mode: str, conf: cfg.ConfigOpts,
        caps: host_mod.Capabilities) -> base.Capture:
    """The capture for ``mode`` ('live' or 'cold') on this host."""
    if mode == cold.ManagedSaveCapture.mode:
        return cold.ManagedSaveCapture.from_conf(conf, caps)
    if conf.libvirt.use_backup_api and caps.backup:
        return backup.BackupCapture.from_conf(conf, caps)
    return live.BlockCopyCapture.from_conf(conf, caps)
