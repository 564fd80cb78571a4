"""vmsnap's compute driver: Nova's ``snapshot()`` contract, vmsnap's engine.

Loaded by a compute service through the ``vmsnap.compute_drivers``
stevedore namespace (entry point ``libvirt``); the work is done by
:mod:`vmsnap_driver.engine`.
"""

from typing import Any, List, Optional

from oslo_concurrency import lockutils
from oslo_config import cfg

from vmsnap_driver import archive
from vmsnap_driver import config
from vmsnap_driver import engine
from vmsnap_driver import glance
from vmsnap_driver import host as host_mod
from vmsnap_driver import memory_image
from vmsnap_driver import power
from vmsnap_driver import recovery
from vmsnap_driver import restore

# Kept here too: callers know them from the driver, as in Nova.
IMAGE_PENDING_UPLOAD = engine.IMAGE_PENDING_UPLOAD
IMAGE_UPLOADING = engine.IMAGE_UPLOADING


class LibvirtDriver:
    """Snapshots of libvirt/QEMU guests into Glance, Nova-driver shaped."""

    def __init__(self, virtapi: Any = None,
                 conf: cfg.ConfigOpts = config.CONF) -> None:
        self.virtapi = virtapi
        self._conf = conf
        self._host = host_mod.Host(conf.libvirt.connection_uri)
        self._engine = engine.SnapshotEngine(self._host, conf.libvirt,
                                             conf.state_path)
        self._images = glance.ImageService(conf)

    def init_host(self, host: str) -> None:
        """Ready the connections before the first request, as Nova does.

        A compute service calls it at start-up: libvirt is connected (and
        proven to answer) and the Glance client built here, so that the
        first snapshot costs what every other one does.
        """
        self._host.connect()
        self._images.connect()

    def snapshot(self, context: Any, instance: Any, image_id: str,
                 update_task_state: Optional[
                     engine.TaskStateCallback] = None,
                 progress: Optional[engine.ProgressCallback] = None
                 ) -> None:
        """Capture the instance's disks into the queued image.

        Only one snapshot of an instance runs at a time; others wait.
        ``progress`` (beyond Nova's contract) is told the bytes uploaded.
        """
        with _instance_lock(instance.uuid):
            self._engine.take(instance, image_id,
                              update_task_state or engine.no_task_state,
                              self._images_for(context), progress)

    def check_revert(self, context: Any, instance: Any,
                     image_id: str) -> restore.Plan:
        """Raise RevertRefused unless ``image_id`` can be reverted to.

        Touches nothing: an API answers a bad request with it at once.
        """
        return restore.plan(self._host.get_guest(instance.uuid),
                            self._images_for(context), image_id,
                            self._seal_key)

    def revert(self, context: Any, instance: Any, image_id: str,
               progress: Optional[restore.Progress] = None) -> None:
        """Bring the instance back to snapshot ``image_id``, in place.

        Nova has no such driver call: a server is reverted by rebuilding
        it onto a snapshot of its own (vmsnap-compute's rebuild action,
        and the Nova driver's ``rebuild``).  Every disk of the snapshot is
        proven before the guest is touched; with a memory state the guest
        resumes at the snapshot's instant, without one it boots.  It runs
        under the same per-instance lock as ``snapshot``.
        """
        with _instance_lock(instance.uuid):
            restore.revert(self._host.get_guest(instance.uuid),
                           self._images_for(context), image_id,
                           self._conf.state_path,
                           self._conf.libvirt.snapshots_directory,
                           self._seal_key, progress or (lambda _n: None))

    def import_archive(self, path: str,
                       define: Optional[archive.DefineRequest] = None,
                       progress: Optional[restore.Progress] = None
                       ) -> archive.Imported:
        """Bring an exported snapshot (an OVA) back as images, and a guest.

        With ``define`` the guest is defined on this host from the
        archived domain XML, and started on request.  The archive is
        untrusted and proven whole first; an import that fails leaves
        nothing, even when the process is killed (its journal record).
        """
        return archive.import_archive(
            self._images, self._host, path, self._conf.state_path,
            self._seal_key, define=define, lock=_instance_lock,
            progress=progress or (lambda _n: None))

    def power_off(self, instance: Any) -> None:
        """Nova's clean stop: shut down, then power off after a while."""
        self._under_lock(instance, lambda guest: power.power_off(
            guest, self._conf.shutdown_timeout))

    def power_on(self, instance: Any) -> None:
        self._under_lock(instance, power.power_on)

    def pause(self, instance: Any) -> None:
        self._under_lock(instance, power.pause)

    def unpause(self, instance: Any) -> None:
        self._under_lock(instance, power.unpause)

    def _under_lock(self, instance: Any, action: Any) -> None:
        """Never under a running snapshot or revert of the same server."""
        with _instance_lock(instance.uuid):
            action(self._host.get_guest(instance.uuid))

    def _seal_key(self) -> bytes:
        return memory_image.seal_key(
            self._conf.libvirt.memory_seal_key_file)

    def _images_for(self, context: Any) -> glance.ImageService:
        return glance.for_context(self._conf, context, self._images)

    def recover(self) -> List[recovery.Outcome]:
        """Finish or undo what operations of a killed process left.

        Called before a compute service takes requests (and by ``vmsnap
        recover``): every guest is brought back to the state it had.
        """
        return recovery.recover(self._host, self._images,
                                self._conf.state_path, lock=_instance_lock)


def _instance_lock(instance_uuid: str) -> Any:
    """One operation that changes an instance at a time, across processes."""
    return lockutils.lock('vmsnap-snapshot-%s' % instance_uuid,
                          external=True)
