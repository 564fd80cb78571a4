"""vmsnap inside nova-compute: Nova's LibvirtDriver with vmsnap's snapshot.

``snapshot`` is overridden and hands the work to the same engine vmsnap's
own driver uses; ``rebuild`` reverts an instance rebuilt onto a vmsnap
snapshot of itself, and leaves every other rebuild to Nova.  Nova's
contract is kept: images go through Nova's image API with the request
context (Nova's ``[glance]`` options, the user's token), they carry Nova's
snapshot metadata, errors are Nova's exceptions, and task states move with
``expected_state`` as Nova's manager checks them.
vmsnap's options are read from nova.conf's ``[vmsnap]`` section.

Importing this module imports Nova; the rest of vmsnap never does.
Nova loads ``'nova.virt.' + compute_driver`` only, so the small
``vmsnap-nova`` distribution (``nova_shim/``) ships ``nova.virt.vmsnap``,
which makes ``compute_driver = vmsnap.LibvirtDriver`` load this class.
"""

from typing import Any, Optional

import os

import nova.conf
from nova import context as nova_context
from nova import exception as nova_exception
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import cfg
from oslo_log import log as logging

from vmsnap_driver import engine
from vmsnap_driver import exception
from vmsnap_driver import host as host_mod
from vmsnap_driver import memory_image
from vmsnap_driver import recovery
from vmsnap_driver import restore
from vmsnap_driver import snapshot_options

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF

group = cfg.OptGroup(
    'vmsnap', title='vmsnap snapshot options',
    help='How vmsnap takes snapshots inside nova-compute '
         '(compute_driver = vmsnap.LibvirtDriver).')
# The same options as vmsnap's own [libvirt] section, but the connection:
# Nova's [libvirt] connection_uri already says where libvirtd is.
snapshot_opts = snapshot_options.snapshot_opts


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(snapshot_opts, group=group)


def list_opts() -> list:
    """Options for oslo-config-generator (namespace ``vmsnap.nova``)."""
    return [(group, snapshot_opts)]


GLANCE_FIELDS = ('os_hidden', 'visibility', 'protected', 'name')


def _state_path() -> str:
    """vmsnap's journal, inside Nova's state_path."""
    return os.path.join(CONF.state_path, 'vmsnap')


class _NovaImages:
    """The engine's image calls, through Nova's image API and context."""

    def __init__(self, driver: Any, context: Any, instance: Any) -> None:
        self._driver = driver
        self._api = driver._image_api
        self._context = context
        self._instance = instance

    def get(self, image_id: str) -> dict:
        """The image with its properties at the top, as Glance shows it."""
        try:
            image = self._api.get(self._context, image_id)
        except nova_exception.ImageNotFound:
            raise exception.ImageNotFound(image_id=image_id)
        flat = dict(image.get('properties') or {})
        flat.update((k, v) for k, v in image.items() if k != 'properties')
        return flat

    def data(self, image_id: str) -> Any:
        return self._api.download(self._context, image_id)

    def check_queued(self, image_id: str) -> dict:
        image = self.get(image_id)
        if image.get('status') != 'queued':
            raise exception.ImageNotQueued(image_id=image_id,
                                           status=image.get('status'))
        return image

    def create(self, name: str, properties: dict) -> dict:
        # Nova's image API sends 'properties' as strings; Glance's own
        # fields (os_hidden is a boolean) go beside them.
        properties = dict(properties)
        core = {key: properties.pop(key) for key in GLANCE_FIELDS
                if key in properties}
        return self._api.create(self._context, dict(
            core, name=name, properties=properties))

    def delete(self, image_id: str) -> None:
        try:
            self._api.delete(self._context, image_id)
        except Exception as e:  # on an error path: log, do not mask
            LOG.warning('Image %(id)s could not be deleted: %(error)s',
                        {'id': image_id, 'error': e})

    def upload(self, image_id: str, data: Any, size: int, disk_format: str,
               properties: dict, container_format: str = 'bare',
               current: Optional[dict] = None) -> dict:
        """As Nova's own driver uploads.

        Nova's update purges whatever it does not send, stale vmsnap
        properties included: ``current`` is not needed.
        """
        name = self._api.get(self._context, image_id).get('name')
        metadata = self._driver._create_snapshot_metadata(
            self._instance.image_meta, self._instance, disk_format, name)
        metadata['container_format'] = container_format
        metadata['properties'].update(properties)
        return self._api.update(self._context, image_id, metadata, data)

    def set_properties(self, image_id: str, properties: dict) -> None:
        properties = dict(properties)
        core = {key: properties.pop(key) for key in GLANCE_FIELDS
                if key in properties}
        self._api.update(self._context, image_id,
                         dict(core, properties=properties),
                         purge_props=False)


class LibvirtDriver(libvirt_driver.LibvirtDriver):
    """Nova's libvirt driver; snapshots are vmsnap's."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        super().__init__(virtapi, read_only)
        register_opts(CONF)
        self._vmsnap_host = host_mod.Host(libvirt_driver.LibvirtDriver._uri())
        self._vmsnap = engine.SnapshotEngine(self._vmsnap_host, CONF.vmsnap,
                                             _state_path())

    def init_host(self, host: str) -> None:
        """Nova's start-up, then vmsnap's recovery of what a crash left."""
        super().init_host(host)
        context = nova_context.get_admin_context()
        for outcome in recovery.recover(
                self._vmsnap_host, _NovaImages(self, context, None),
                _state_path()):
            LOG.warning('%s', outcome.message,
                        instance_uuid=outcome.instance_uuid)

    def snapshot(self, context: Any, instance: Any, image_id: str,
                 update_task_state: Any) -> None:
        try:
            self._vmsnap.take(instance, image_id, update_task_state,
                              _NovaImages(self, context, instance))
        except exception.InstanceNotFound:
            # What Nova's own driver raises for a missing domain.
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        except exception.VmsnapException as e:
            # Nova's manager logs and reports NovaException messages.
            raise nova_exception.NovaException(str(e))

    def rebuild(self, context: Any, instance: Any, image_meta: Any,
                **kwargs: Any) -> None:
        """Revert an instance rebuilt onto a vmsnap snapshot of itself.

        Nova's manager calls this with keyword arguments; any rebuild that
        is not a revert (another image, an evacuation, a boot volume)
        raises NotImplementedError, on which the manager runs its own
        default rebuild.
        """
        images = _NovaImages(self, context, instance)
        image_id = getattr(image_meta, 'id', None)
        if (kwargs.get('evacuate') or kwargs.get('reimage_boot_volume')
                or not image_id
                or not restore.is_snapshot_of(images.get(image_id),
                                              instance.uuid)):
            raise NotImplementedError()
        try:
            restore.revert(self._vmsnap_host.get_guest(instance.uuid),
                           images, image_id, _state_path(),
                           CONF.vmsnap.snapshots_directory,
                           lambda: memory_image.seal_key(
                               CONF.vmsnap.memory_seal_key_file))
        except exception.InstanceNotFound:
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        except exception.VmsnapException as e:
            raise nova_exception.NovaException(str(e))
