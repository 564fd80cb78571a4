"""What the ``vmsnap`` commands share: the driver, scratch space, progress."""

import argparse
import os
import tempfile
from typing import Any

from stevedore import driver as stevedore_driver

from vmsnap_driver import config
from vmsnap_driver import glance
from vmsnap_driver import progress

CONF = config.CONF


def load_driver() -> Any:
    """The configured compute driver, as vmsnap-compute loads it."""
    return stevedore_driver.DriverManager(
        'vmsnap.compute_drivers', CONF.compute_driver,
        invoke_on_load=True).driver


def images() -> glance.ImageService:
    return glance.ImageService(CONF)


def snapshots_directory() -> str:
    """Where whole images go: the operator sized it for snapshots."""
    os.makedirs(CONF.libvirt.snapshots_directory, mode=0o711, exist_ok=True)
    return CONF.libvirt.snapshots_directory


def workdir() -> str:
    """A scratch directory of this command's for whole images."""
    return tempfile.mkdtemp(prefix='vmsnap-cli-', dir=snapshots_directory())


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar (on standard '
                             'error).')


def progress_bar(parsed_args: argparse.Namespace, total: int,
                 label: str) -> progress.Progress:
    return progress.Progress(total, label,
                             enabled=not parsed_args.no_progress)
