"""Capture strategies, picked by the name :mod:`vmsnap_driver.decide` gives."""

from oslo_config import cfg

from vmsnap_driver.capture import base
from vmsnap_driver.capture import cold
from vmsnap_driver.capture import live

_STRATEGIES = {
    live.BlockCopyCapture.mode: live.BlockCopyCapture,
    cold.ManagedSaveCapture.mode: cold.ManagedSaveCapture,
}


def get(mode: str, conf: cfg.ConfigOpts) -> base.Capture:
    return _STRATEGIES[mode].from_conf(conf)
