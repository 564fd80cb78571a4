"""vmsnap's compute driver: Nova's ``snapshot()`` contract, vmsnap's engine.

Loaded by a compute service through the ``vmsnap.compute_drivers``
stevedore namespace (entry point ``libvirt``); the work is done by
:mod:`vmsnap_driver.engine`.
"""

from typing import Any, Optional

from oslo_concurrency import lockutils
from oslo_config import cfg

from vmsnap_driver import config
from vmsnap_driver import engine
from vmsnap_driver import glance
from vmsnap_driver import host as host_mod

# Kept here too: callers know them from the driver, as in Nova.
IMAGE_PENDING_UPLOAD = engine.IMAGE_PENDING_UPLOAD
IMAGE_UPLOADING = engine.IMAGE_UPLOADING


class LibvirtDriver:
    """Snapshots of libvirt/QEMU guests into Glance, Nova-driver shaped."""

    def __init__(self, virtapi: Any = None,
                 conf: cfg.ConfigOpts = config.CONF) -> None:
        self.virtapi = virtapi
        self._engine = engine.SnapshotEngine(
            host_mod.Host(conf.libvirt.connection_uri), conf.libvirt)
        self._images = glance.ImageService(conf)

    def snapshot(self, context: Any, instance: Any, image_id: str,
                 update_task_state: Optional[
                     engine.TaskStateCallback] = None) -> None:
        """Capture the instance's disks into the queued image.

        Only one snapshot of an instance runs at a time; others wait.
        """
        with lockutils.lock('vmsnap-snapshot-%s' % instance.uuid,
                            external=True):
            self._engine.take(instance, image_id,
                              update_task_state or engine.no_task_state,
                              self._images)
