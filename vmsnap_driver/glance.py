"""Glance: check the target image, then stream the snapshot into it.

The client is built from keystoneauth1 options in ``[glance]``, so the same
code reaches a cloud's Glance through the catalog (``auth_type =
password``) and a standalone one (``auth_type = none`` plus
``endpoint_override``).

A transient failure (no connection, a 5xx answer) must not cost a
snapshot: a call that can be repeated safely (reads, setting properties,
deleting, an upload from a file while the image is still ``queued``) is
repeated up to ``[glance] num_retries`` times, 1, 2, 4 ... s apart, as
Nova's own option does.  Creating an image is not: a lost answer may hide
an image that was created.  A streamed upload cannot be sent again.
"""

import contextlib
import hashlib
import itertools
import re
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, TypeVar

import glanceclient
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import uuidutils

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

GROUP = 'glance'
QUEUED = 'queued'
ACTIVE = 'active'
# Glance v2's JSON patch in which ``add`` also replaces.
PATCH_TYPE = 'application/openstack-images-v2.1-json-patch'
# Seconds before a retry: 1, 2, 4, ... at most this.
MAX_RETRY_DELAY = 30
# The properties vmsnap records on a snapshot's image.
OWN_PREFIX = 'vmsnap_'
T = TypeVar('T')
# Glance's own fields of an image, as opposed to its properties.
CORE_FIELDS = frozenset([
    'id', 'name', 'status', 'visibility', 'owner', 'protected', 'checksum',
    'size', 'virtual_size', 'container_format', 'disk_format', 'created_at',
    'updated_at', 'deleted', 'deleted_at', 'locations', 'direct_url',
    'min_ram', 'min_disk', 'tags', 'file', 'schema', 'self', 'stores',
    'os_hash_algo', 'os_hash_value', 'os_hidden',
])


class ImageService:
    """The few Glance v2 calls a snapshot makes.

    :param auth: a keystoneauth plugin to act with (a user's token, from
        keystonemiddleware); the ``[glance]`` credentials when None.
    """

    def __init__(self, conf: cfg.ConfigOpts, auth: Any = None) -> None:
        self._conf = conf
        self._auth = auth
        self._client = None
        self._adapter = None

    def connect(self) -> None:
        """Build the client now, not in the first request that needs it.

        keystoneauth loads its plugins and glanceclient its API module on
        first use: 0.4 s here, which a service pays at start-up rather than
        in its first snapshot.  Nothing is sent to Glance.
        """
        self._get_client()

    def _get_client(self) -> Any:
        if self._client is None:
            with self._translated('connect to', '-'):
                auth = self._auth or ks_loading.load_auth_from_conf_options(
                    self._conf, GROUP)
                session = ks_loading.load_session_from_conf_options(
                    self._conf, GROUP, auth=auth)
                self._adapter = ks_loading.load_adapter_from_conf_options(
                    self._conf, GROUP, session=session, auth=auth)
                group = self._conf[GROUP]
                self._client = glanceclient.Client(
                    '2', session=session, auth=auth,
                    service_type=group.service_type,
                    service_name=group.service_name,
                    interface=group.valid_interfaces,
                    region_name=group.region_name,
                    endpoint_override=group.endpoint_override)
        return self._client

    def _endpoint(self) -> str:
        """Glance's unversioned endpoint, however the catalog spells it."""
        self._get_client()
        with self._translated('locate', '-'):
            endpoint = self._adapter.get_endpoint()
        if not endpoint:
            raise exception.GlanceUnavailable(
                reason='no image endpoint in the catalog or in '
                       '[glance] endpoint_override')
        return re.sub(r'/v\d+(\.\d+)?/?$', '', endpoint.rstrip('/'))

    @contextlib.contextmanager
    def _translated(self, action: str, image_id: str) -> Iterator[None]:
        try:
            yield
        except (glance_exc.HTTPNotFound, ks_exc.NotFound):
            raise exception.ImageNotFound(image_id=image_id)
        except (glance_exc.CommunicationError,
                # What glanceclient makes of keystoneauth's timeouts.
                glance_exc.InvalidEndpoint,
                ks_exc.ConnectFailure,
                ks_exc.EndpointNotFound,
                ks_exc.MissingAuthPlugin,
                ks_exc.ConnectionError,
                ks_exc.DiscoveryFailure) as e:
            raise exception.GlanceUnavailable(
                reason=str(e) or type(e).__name__)
        except (glance_exc.HTTPUnauthorized, glance_exc.HTTPForbidden,
                ks_exc.Unauthorized, ks_exc.Forbidden) as e:
            raise exception.GlanceRefused(
                action=action, image_id=image_id,
                reason='%s; check the [glance] credentials' % e)
        except (glance_exc.HTTPException, ks_exc.ClientException) as e:
            status = getattr(e, 'code', None) or getattr(e, 'http_status',
                                                         None)
            if isinstance(status, int) and status >= 500:
                raise exception.GlanceFailed(
                    reason='%d to "%s image %s": %s'
                    % (status, action, image_id, e))
            raise exception.GlanceRefused(action=action, image_id=image_id,
                                          reason=str(e))

    def _retried(self, action: str, image_id: str,
                 call: Callable[[], T]) -> T:
        """``call()``, made again after a transient failure (see above)."""
        retries = self._conf[GROUP].num_retries
        for attempt in itertools.count(1):
            try:
                with self._translated(action, image_id):
                    return call()
            except exception.GlanceUnavailable as e:
                if attempt > retries:
                    raise
                delay = min(2 ** (attempt - 1), MAX_RETRY_DELAY)
                LOG.warning('Glance failed to %(action)s image %(id)s '
                            '(%(error)s): retry %(n)d of %(max)d in %(delay)d '
                            's', {'action': action, 'id': image_id,
                                  'error': e, 'n': attempt, 'max': retries,
                                  'delay': delay})
                time.sleep(delay)

    def get(self, image_id: str) -> dict:
        return self._retried('read', image_id, lambda: dict(
            self._get_client().images.get(image_id)))

    def find(self, name_or_id: str) -> dict:
        """An image by id or, as the openstack client does, by its name.

        A name must be one image's (hidden ones included).
        """
        if uuidutils.is_uuid_like(name_or_id):
            try:
                return self.get(name_or_id)
            except exception.ImageNotFound:
                pass
        found = {i['id']: i for hidden in ('false', 'true')
                 for i in self.list(name=name_or_id, os_hidden=hidden)}
        if not found:
            raise exception.ImageNotFound(image_id=name_or_id)
        if len(found) > 1:
            raise exception.GlanceRefused(
                action='find', image_id=name_or_id,
                reason='%d images have that name (%s): give an id'
                % (len(found), ', '.join(sorted(found))))
        return next(iter(found.values()))

    def create(self, name: str, properties: dict) -> dict:
        """A new, queued image, as Nova's API creates one for a snapshot.

        Private to its owner, as Nova makes snapshots.
        """
        with self._translated('create', '-'):
            return dict(self._get_client().images.create(
                name=name, **dict({'visibility': 'private'}, **properties)))

    def delete(self, image_id: str) -> None:
        """Delete an image a failed snapshot leaves behind; never raise.

        Called on an error path: the snapshot's own error is the one to
        report, so a failure here is only logged.
        """
        try:
            self._retried('delete', image_id, lambda: self._get_client(
            ).images.delete(image_id))
        except exception.ImageNotFound:
            LOG.info('Image %s is gone already', image_id)
            return
        except Exception as e:  # an error path: log it, never hide another
            LOG.warning('Image %(id)s could not be deleted: %(error)s',
                        {'id': image_id, 'error': e})
        else:
            LOG.info('Image %s deleted', image_id)

    def image_location(self, image_id: str) -> str:
        """The image's URL, for a Location header."""
        return '%s/v2/images/%s' % (self._endpoint(), image_id)

    def check_queued(self, image_id: str) -> dict:
        """The image, if it can still receive data; fail early otherwise."""
        try:
            image = self.get(image_id)
        except exception.ImageNotFound:
            raise exception.SnapshotImageNotFound(image_id=image_id)
        if image['status'] != QUEUED:
            raise exception.ImageNotQueued(image_id=image_id,
                                           status=image['status'])
        return image

    def upload(self, image_id: str, data: Any, size: int, disk_format: str,
               properties: dict, container_format: str = 'bare',
               current: Optional[dict] = None) -> dict:
        """Declare formats, size and properties, then stream ``data``.

        ``data`` is a file-like object, read in pieces, so the image is
        never held in memory.  Declaring the size makes Glance
        reject a short stream, so a failed upload never leaves an
        ``active`` image with partial data.

        :param current: the image as Glance holds it now.  What it holds is
            not sent again: Glance checks each property of a patch on its
            own (28 ms each here), and Nova's API creates a snapshot's
            image with the base image's properties.  Its vmsnap properties
            that ``properties`` leaves out are removed: copied from a base
            image that was itself a vmsnap snapshot, they describe that one.
        """
        wanted = dict(properties, disk_format=disk_format,
                      container_format=container_format)
        current = current or {}
        self.set_properties(
            image_id, unheld(wanted, current),
            remove=[key for key in current
                    if key.startswith(OWN_PREFIX) and key not in wanted])
        LOG.info('Uploading %(size)d bytes of %(fmt)s into image %(id)s',
                 {'size': size, 'fmt': disk_format, 'id': image_id})
        self._put_data(image_id, data, size)
        image = self.get(image_id)
        if image['status'] != ACTIVE:
            raise exception.GlanceRefused(
                action='activate', image_id=image_id,
                reason='it is "%s" after the upload' % image['status'])
        return image

    def _put_data(self, image_id: str, data: Any, size: int) -> None:
        """PUT the bytes; again from the start when that is possible.

        Sent with a Content-Length, not chunked as glanceclient sends it:
        WSGI servers read a body of known length in large pieces, and that
        alone made uploads here several times faster.  A file (it can
        seek) is sent again while Glance still has the image ``queued``
        (it puts it back there when an upload fails).
        """
        url = '%s/v2/images/%s/file' % (self._endpoint(), image_id)
        headers = {'Content-Type': 'application/octet-stream',
                   'Content-Length': str(size)}
        if not hasattr(data, 'seek'):
            with self._translated('upload data to', image_id):
                self._adapter.put(url, data=data, headers=headers)
            return

        attempts = []

        def put() -> None:
            if attempts:
                with self._translated('read', image_id):
                    image = dict(self._get_client().images.get(image_id))
                if image['status'] == ACTIVE and image.get('size') == size:
                    return
                if image['status'] != QUEUED:
                    raise exception.GlanceRefused(
                        action='upload data to', image_id=image_id,
                        reason='it is "%s", not queued, after a failed '
                        'upload' % image['status'])
                data.seek(0)
            attempts.append(1)
            self._adapter.put(url, data=data, headers=headers)
        self._retried('upload data to', image_id, put)

    def data(self, image_id: str) -> Any:
        """The image's bytes, as an iterator of chunks.

        The request is retried; a failure once the bytes flow is not.
        """
        return self._retried('download', image_id, lambda: self._get_client(
        ).images.data(image_id, do_checksum=False))

    def set_properties(self, image_id: str, properties: dict,
                       remove: Iterable[str] = ()) -> None:
        """Set fields and properties, and ``remove`` some, in one JSON patch.

        Sent as it is, not through glanceclient's ``images.update``, which
        reads the image (and, once, its schema) before the patch and again
        after it: one request where there were three or four, each on the
        way to the upload.  With Glance's v2.1 patch, ``add`` sets a field
        or property whether or not it exists; ``remove`` needs it to exist.
        """
        def path(key: str) -> str:
            return '/' + key.replace('~', '~0').replace('/', '~1')
        patch = [{'op': 'add', 'path': path(key), 'value': value}
                 for key, value in sorted(properties.items())]
        patch += [{'op': 'remove', 'path': path(key)}
                  for key in sorted(remove)]
        if not patch:
            return
        self._retried('update', image_id, lambda: self._adapter.patch(
            '%s/v2/images/%s' % (self._endpoint(), image_id), json=patch,
            headers={'Content-Type': PATCH_TYPE}))

    def list(self, **filters: str) -> List[dict]:
        """Every image matching ``filters`` (properties too), all pages."""
        return self._retried('list', '-', lambda: [
            dict(image) for image in
            self._get_client().images.list(filters=filters)])


def unheld(properties: dict, image: dict) -> dict:
    """What of ``properties`` ``image`` does not hold yet.

    Glance checks each property of a patch on its own (28 ms each here):
    what an image holds already is not sent again.
    """
    return {key: value for key, value in properties.items()
            if image.get(key) != value}


def for_context(conf: cfg.ConfigOpts, context: Any,
                service: ImageService) -> ImageService:
    """Glance as the request's user, or as the service.

    A request that carries a user's token (keystonemiddleware's plugin on
    the context) reaches Glance with it, as Nova does, so that images
    belong to the user's project; others use ``service``, the ``[glance]``
    credentials.
    """
    auth = getattr(context, 'user_auth_plugin', None)
    return ImageService(conf, auth=auth) if auth is not None else service


def download(images: Any, image: dict, dest: str,
             progress: Callable[[int], None] = lambda _n: None) -> str:
    """Write the image's bytes into ``dest``; the hash Glance would record.

    The hash uses the image's own ``os_hash_algo``, so the caller can tell
    whether the bytes served are the bytes Glance stored.
    """
    served = hashlib.new(image.get('os_hash_algo') or 'sha512')
    with open(dest, 'wb') as f:
        for chunk in images.data(image['id']):
            served.update(chunk)
            f.write(chunk)
            progress(len(chunk))
    return served.hexdigest()
