"""The servers resource: each libvirt domain on this host is a server."""

import datetime
import hashlib
import json
import os
import re
import socket
import threading
import time
from typing import Any, Optional, Tuple

from oslo_log import log as logging
import webob

from vmsnap_driver.api import faults
from vmsnap_driver.api import schemas
from vmsnap_driver.compute import manager as manager_mod
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import image_properties
from vmsnap_driver import journal
from vmsnap_driver import policy

# libvirt state -> (status, vm_state, power_state), as Nova reports them.
STATES = {
    guest_mod.RUNNING: ('ACTIVE', 'active', 1),
    guest_mod.PAUSED: ('PAUSED', 'paused', 3),
    guest_mod.SHUTOFF: ('SHUTOFF', 'stopped', 4),
    guest_mod.CRASHED: ('ERROR', 'error', 6),
    guest_mod.SUSPENDED: ('SUSPENDED', 'suspended', 7),
    guest_mod.NOSTATE: ('UNKNOWN', 'error', 0),
}
MANAGED_SAVED = ('SUSPENDED', 'suspended', 4)
# Checked against the guest's own state: a server shown in ERROR after a
# failed rebuild still has its guest as it was, and may try again.
SNAPSHOT_STATUSES = ('ACTIVE', 'PAUSED', 'SHUTOFF', 'SUSPENDED')
# A managed-saved guest would resume its saved memory over reverted disks.
REBUILD_STATUSES = ('ACTIVE', 'PAUSED', 'SHUTOFF')
# The power actions: Nova's action name, rule, the statuses it may start
# from, and the manager's name for it.
POWER_ACTIONS = {
    'os-stop': (policy.STOP, ('ACTIVE', 'ERROR'), 'stop'),
    'os-start': (policy.START, ('SHUTOFF', 'SUSPENDED'), 'start'),
    'pause': (policy.PAUSE, ('ACTIVE',), 'pause'),
    'unpause': (policy.UNPAUSE, ('PAUSED',), 'unpause'),
}
REBUILD_HINT = (' vmsnap-compute rebuilds a server only onto one of its own '
                'snapshots, which reverts it; it changes nothing else.')

LOG = logging.getLogger(__name__)

UUID_RE = re.compile(schemas.UUID_PATTERN)
# Under state_path: when each domain without Nova's record was first seen.
FIRST_SEEN = 'servers-first-seen.json'


def _status(guest: guest_mod.Guest) -> Tuple[str, str, int]:
    state = guest.state()
    if state == guest_mod.SHUTOFF and guest.has_managed_save():
        return MANAGED_SAVED
    return STATES[state]


class Servers:
    """Handlers for /v2.1/servers; every method returns a JSON-able dict."""

    def __init__(self, host: Any, manager: manager_mod.ComputeManager,
                 images: Any, enforcer: policy.Enforcer,
                 state_path: Optional[str] = None) -> None:
        self._host = host
        self._manager = manager
        self._images = images
        self._enforcer = enforcer
        self._hostname = socket.gethostname()
        self._host_id = hashlib.sha224(
            self._hostname.encode()).hexdigest()
        self._first_seen_path = (os.path.join(state_path, FIRST_SEEN)
                                 if state_path else None)
        self._first_seen = _read_json(self._first_seen_path)
        self._lock = threading.Lock()

    # -- lookups ------------------------------------------------------
    def _guest(self, server_id: str, context: Any,
               rule: str = policy.SHOW) -> guest_mod.Guest:
        """The server, if the caller may see it and do ``rule``.

        A server the caller may not see is a 404, as in Nova, which never
        tells that another project's server exists; one it may see but not
        act on is a 403.
        """
        not_found = faults.Fault(404, 'Instance %s could not be found.'
                                 % server_id)
        if not UUID_RE.match(server_id):
            raise not_found
        try:
            guest = self._host.get_guest(server_id)
        except exception.InstanceNotFound:
            raise not_found
        owner = guest.owner_project()
        if not self._enforcer.allows(policy.SHOW, context, owner):
            raise not_found
        if rule != policy.SHOW and not self._enforcer.allows(
                rule, context, owner):
            raise faults.Fault(403, 'Policy does not allow %s to be '
                                    'performed.' % rule)
        return guest

    def _created(self, uuid: str, facts: guest_mod.ServerFacts) -> str:
        """Nova's creation time; else when vmsnap first saw the domain.

        libvirt keeps no creation time: the first sighting is kept under
        ``state_path``, so that it stays the same across restarts.
        """
        if facts.created:
            return facts.created.replace(' ', 'T') + 'Z'
        with self._lock:
            if uuid not in self._first_seen:
                self._first_seen[uuid] = _timestamp(time.time())
                if self._first_seen_path:
                    try:
                        journal.write_json(self._first_seen_path,
                                           self._first_seen)
                    except OSError as e:
                        LOG.warning('Could not keep when server %(uuid)s '
                                    'was first seen (%(error)s): its '
                                    '"created" will change at the next '
                                    'start', {'uuid': uuid, 'error': e})
            return self._first_seen[uuid]

    def _image(self, guest: guest_mod.Guest, facts: guest_mod.ServerFacts,
               base: str) -> Any:
        """The image it was built from: Nova's record, else its disk file.

        The client shows "booted from volume" for an empty value: only a
        server without a file disk is.
        """
        if facts.image:
            return {'id': facts.image, 'links': [
                {'rel': 'bookmark',
                 'href': '%s/images/%s' % (base, facts.image)}]}
        disks = [d for d in guest.disks() if d.path]
        if facts.flavor is None and disks:
            return {'id': os.path.basename(disks[0].path), 'links': []}
        return ''

    # -- views --------------------------------------------------------
    def _links(self, base: str, uuid: str) -> list:
        return [{'rel': 'self', 'href': '%s/v2.1/servers/%s' % (base, uuid)},
                {'rel': 'bookmark', 'href': '%s/servers/%s' % (base, uuid)}]

    def _summary(self, guest: guest_mod.Guest, base: str) -> dict:
        return {'id': guest.uuid, 'name': guest.name,
                'links': self._links(base, guest.uuid)}

    def _flavor(self, guest: guest_mod.Guest, facts: guest_mod.ServerFacts,
                version: tuple) -> dict:
        """Nova's flavor record; else what the domain has."""
        vcpus, ram = guest.hardware()
        flavor = facts.flavor or {}
        name = flavor.get('name') or 'vmsnap-%dcpu-%dmb' % (vcpus, ram)

        def number(key: str, default: int) -> int:
            try:
                return int(flavor.get(key))
            except (TypeError, ValueError):
                return default
        if version >= (2, 47):
            return {'vcpus': number('vcpus', vcpus),
                    'ram': number('memory', ram), 'disk': number('disk', 0),
                    'ephemeral': number('ephemeral', 0),
                    'swap': number('swap', 0), 'original_name': name,
                    'extra_specs': {}}
        return {'id': name, 'links': []}

    def _detail(self, guest: guest_mod.Guest, base: str,
                version: tuple) -> dict:
        status, vm_state, power_state = _status(guest)
        if self._manager.in_error(guest.uuid):
            status, vm_state = 'ERROR', 'error'
        task = self._manager.task(guest.uuid)
        if task:
            status = task.status
        facts = guest.facts()
        created = self._created(guest.uuid, facts)
        launched = (_timestamp(facts.launched) if facts.launched
                    else None)
        server = self._summary(guest, base)
        server.update({
            'status': status,
            'tenant_id': facts.project or '',
            'user_id': facts.user or '',
            'metadata': {},
            'hostId': self._host_id,
            'image': self._image(guest, facts, base),
            'flavor': self._flavor(guest, facts, version),
            'created': created,
            'updated': max(created, launched or ''),
            'addresses': {},
            'accessIPv4': '',
            'accessIPv6': '',
            'config_drive': '',
            'key_name': None,
            'progress': task.progress if task else 0,
            'security_groups': [],
            'OS-DCF:diskConfig': 'MANUAL',
            'OS-EXT-AZ:availability_zone': 'nova',
            'OS-EXT-SRV-ATTR:host': self._hostname,
            'OS-EXT-SRV-ATTR:hypervisor_hostname': self._hostname,
            'OS-EXT-SRV-ATTR:instance_name': guest.name,
            'OS-EXT-STS:task_state': task.state if task else None,
            'OS-EXT-STS:vm_state': vm_state,
            'OS-EXT-STS:power_state': power_state,
            'OS-SRV-USG:launched_at': launched,
            'OS-SRV-USG:terminated_at': None,
            'os-extended-volumes:volumes_attached': [],
        })
        if version >= (2, 9):
            server['locked'] = False
        if version >= (2, 16):
            server['host_status'] = 'UP'
        if version >= (2, 19):
            server['description'] = None
        if version >= (2, 26):
            server['tags'] = []
        fault = self._manager.fault(guest.uuid)
        if fault:
            server['fault'] = fault
        return server

    # -- handlers -----------------------------------------------------
    def index(self, req: webob.Request, base: str, version: tuple,
              context: Any) -> dict:
        return {'servers': [self._summary(g, base)
                            for g in self._filtered(req, context)]}

    def detail(self, req: webob.Request, base: str, version: tuple,
               context: Any) -> dict:
        return {'servers': [self._detail(g, base, version)
                            for g in self._filtered(req, context)]}

    def _filtered(self, req: webob.Request, context: Any) -> list:
        guests = [g for g in self._host.list_guests()
                  if self._enforcer.allows(policy.INDEX, context,
                                           g.owner_project())]
        pattern = req.GET.get('name')
        if pattern:
            # Nova matches names as regular expressions.
            try:
                regex = re.compile(pattern)
            except re.error:
                regex = re.compile(re.escape(pattern))
            guests = [g for g in guests if regex.search(g.name)]
        return sorted(guests, key=lambda g: g.name)

    def show(self, req: webob.Request, base: str, version: tuple,
             server_id: str, context: Any) -> dict:
        return {'server': self._detail(self._guest(server_id, context),
                                       base, version)}

    def action(self, req: webob.Request, base: str, version: tuple,
               server_id: str, context: Any) -> webob.Response:
        body = _json_body(req)
        if len(body) != 1:
            raise faults.Fault(400, 'Exactly one action is expected in '
                                    'the request body.')
        name = next(iter(body))
        handler, rule = {
            'createImage': (self._create_image, policy.CREATE_IMAGE),
            'rebuild': (self._rebuild, policy.REBUILD)}.get(name, (None,
                                                                   None))
        if name in POWER_ACTIONS:
            handler, rule = self._power, POWER_ACTIONS[name][0]
        if handler is None:
            raise faults.Fault(400, 'There is no such action: %s' % name)
        guest = self._guest(server_id, context, rule)
        instance = manager_mod.Instance(uuid=guest.uuid, name=guest.name)
        try:
            return handler(body, base, version, guest, instance, context)
        except exception.SnapshotInProgress as e:
            raise faults.Fault(409, str(e))
        except exception.ServiceStopping as e:
            raise faults.Fault(503, str(e))
        except (exception.GlanceUnavailable, exception.GlanceRefused) as e:
            raise faults.Fault(503, str(e))

    def _create_image(self, body: dict, base: str, version: tuple,
                      guest: guest_mod.Guest,
                      instance: manager_mod.Instance,
                      context: Any) -> webob.Response:
        schemas.validate(schemas.create_image, body)
        args = body['createImage']
        metadata = args.get('metadata', {})
        _check_metadata(metadata)
        status = _status(guest)[0]
        if status not in SNAPSHOT_STATUSES:
            raise faults.Fault(409, "Cannot 'createImage' instance %s "
                                    'while it is in status %s'
                               % (guest.uuid, status))
        image_id = self._manager.snapshot(context, instance, args['name'],
                                          metadata, status)
        response = webob.Response(status=202)
        response.headers['Location'] = self._images.image_location(image_id)
        if version >= (2, 45):
            response.content_type = 'application/json'
            response.text = json.dumps({'image_id': image_id})
        return response

    def _power(self, body: dict, base: str, version: tuple,
               guest: guest_mod.Guest, instance: manager_mod.Instance,
               context: Any) -> webob.Response:
        name = next(iter(body))
        schemas.validate(schemas.no_argument(name), body)
        _rule, allowed, action = POWER_ACTIONS[name]
        status = _status(guest)[0]
        # SUSPENDED is a managed save (start resumes it) or a guest that
        # suspended itself (start cannot wake it).
        if status not in allowed or (
                action == 'start' and guest.state() != guest_mod.SHUTOFF):
            raise faults.Fault(409, "Cannot '%s' instance %s while it is in "
                                    'status %s' % (action, guest.uuid,
                                                   status))
        if action == 'stop' and not guest.is_persistent():
            raise faults.Fault(409, "Cannot 'stop' instance %s: its domain "
                                    'is transient, and stopping it would '
                                    'delete it' % guest.uuid)
        self._manager.power(context, instance, action, status)
        return webob.Response(status=202)

    def _rebuild(self, body: dict, base: str, version: tuple,
                 guest: guest_mod.Guest, instance: manager_mod.Instance,
                 context: Any) -> webob.Response:
        schemas.validate(schemas.rebuild, body, REBUILD_HINT)
        image_id = body['rebuild']['imageRef']
        status = _status(guest)[0]
        if status not in REBUILD_STATUSES:
            raise faults.Fault(409, "Cannot 'rebuild' instance %s while it "
                                    'is in status %s' % (guest.uuid, status))
        try:
            self._manager.rebuild(context, instance, image_id)
        except exception.ImageNotFound:
            raise faults.Fault(400, 'Image %s could not be found.'
                               % image_id)
        except (exception.RevertRefused, exception.ImageCorrupt) as e:
            raise faults.Fault(400, str(e))
        response = webob.Response(status=202, content_type='application/json',
                                  charset='UTF-8')
        response.text = json.dumps(
            {'server': self._detail(guest, base, version)})
        return response


def _timestamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(
        epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _read_json(path: Optional[str]) -> dict:
    try:
        with open(path) as f:
            found = json.load(f)
    except (TypeError, OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _json_body(req: webob.Request) -> dict:
    try:
        body = json.loads(req.body or b'null')
    except ValueError:
        raise faults.Fault(400, 'Malformed request body: not JSON.')
    if not isinstance(body, dict):
        raise faults.Fault(400, 'Malformed request body: expected a JSON '
                                'object.')
    return body


def _check_metadata(metadata: dict) -> None:
    if len(metadata) > schemas.MAX_METADATA_ITEMS:
        raise faults.Fault(403, 'Quota exceeded for metadata items: at most '
                                '%d are allowed.' % schemas.MAX_METADATA_ITEMS)
    for key in sorted(metadata):
        if image_properties.reserved(key):
            raise faults.Fault(400, "Invalid input for field 'metadata': "
                                    '%r is a reserved image property: Glance '
                                    'or vmsnap sets it.' % key)
