"""The connection to the local libvirtd and what its hypervisor can do."""

import dataclasses
import threading
from typing import Optional, Tuple
from xml.etree import ElementTree

import libvirt
from oslo_log import log as logging

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod

LOG = logging.getLogger(__name__)


def _ignore_libvirt_error(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we raise instead."""


def _alive(conn: libvirt.virConnect) -> bool:
    """Whether libvirtd still answers on ``conn``.

    ``isAlive`` only knows a connection is closed once a call failed on
    it: after a libvirtd restart, the first call on the old connection
    finds out.
    """
    try:
        conn.getLibVersion()
    except libvirt.libvirtError:
        return False
    return conn.isAlive()


def version_string(version: Tuple[int, ...]) -> str:
    """(9, 0, 0) -> '9.0.0', for logs, reasons and image properties."""
    return '.'.join(str(part) for part in version)


def _version_tuple(packed: int) -> Tuple[int, int, int]:
    return (packed // 1000000, packed // 1000 % 1000, packed % 1000)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the snapshot mode decision needs to know about this host."""

    hypervisor: str
    libvirt_version: Tuple[int, int, int]
    hypervisor_version: Tuple[int, int, int]
    # libvirt's domain capabilities say the backup API works here.
    backup: bool = False
    # The uid and gid QEMU runs as, for files QEMU must create.
    qemu_owner: Optional[Tuple[int, int]] = None


class Host:
    """A lazily opened, re-opened-when-dead libvirt connection."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn = None
        self._lock = threading.Lock()

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not _alive(self._conn):
                libvirt.registerErrorHandler(_ignore_libvirt_error, None)
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as e:
                    raise exception.HypervisorError(
                        action='connect to %s' % self.uri,
                        instance_uuid='-',
                        reason='%s. Is libvirtd running?'
                               % e.get_error_message())
                LOG.info('Connected to libvirt at %s', self.uri)
            return self._conn

    def connect(self) -> None:
        """Open the connection now (it is opened on first use otherwise)."""
        self._connection()

    def _domain(self, uuid: str) -> libvirt.virDomain:
        """The domain on a live connection (libvirtd may have restarted)."""
        return self._connection().lookupByUUIDString(uuid)

    def get_guest(self, instance_uuid: str) -> guest_mod.Guest:
        conn = self._connection()
        try:
            return guest_mod.Guest(conn.lookupByUUIDString(instance_uuid),
                                   self._domain)
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                      libvirt.VIR_ERR_INVALID_ARG):
                raise exception.InstanceNotFound(
                    instance_uuid=instance_uuid, uri=self.uri)
            raise exception.HypervisorError(
                action='look up the domain', instance_uuid=instance_uuid,
                reason=e.get_error_message())

    def list_guests(self) -> list:
        conn = self._connection()
        try:
            return [guest_mod.Guest(dom, self._domain)
                    for dom in conn.listAllDomains(0)]
        except libvirt.libvirtError as e:
            raise exception.HypervisorError(
                action='list domains', instance_uuid='-',
                reason=e.get_error_message())

    def lookup(self, name_or_uuid: str) -> guest_mod.Guest:
        """A guest by UUID or, failing that, by domain name."""
        try:
            return self.get_guest(name_or_uuid)
        except exception.InstanceNotFound:
            pass
        conn = self._connection()
        try:
            return guest_mod.Guest(conn.lookupByName(name_or_uuid),
                                   self._domain)
        except libvirt.libvirtError:
            raise exception.InstanceNotFound(instance_uuid=name_or_uuid,
                                             uri=self.uri)

    def define(self, xml: str) -> guest_mod.Guest:
        """Define a persistent domain from ``xml``."""
        conn = self._connection()
        try:
            return guest_mod.Guest(conn.defineXML(xml), self._domain)
        except libvirt.libvirtError as e:
            raise exception.HypervisorError(
                action='define the domain', instance_uuid='-',
                reason=e.get_error_message())

    def has_domain(self, name: str, uuid: str) -> bool:
        """Whether a domain with this name or this UUID is defined."""
        conn = self._connection()
        for lookup, key in ((conn.lookupByName, name),
                            (conn.lookupByUUIDString, uuid)):
            try:
                lookup(key)
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise exception.HypervisorError(
                        action='look up domain %s' % key,
                        instance_uuid='-', reason=e.get_error_message())
        return False

    def capabilities(self, virt_type: str = 'qemu') -> Capabilities:
        """Versions, plus the domain capabilities of ``virt_type`` guests."""
        conn = self._connection()
        try:
            domcaps = ElementTree.fromstring(
                conn.getDomainCapabilities(None, None, None, virt_type, 0))
            caps = ElementTree.fromstring(conn.getCapabilities())
            return Capabilities(
                hypervisor=conn.getType(),
                libvirt_version=_version_tuple(conn.getLibVersion()),
                hypervisor_version=_version_tuple(conn.getVersion()),
                backup=domcaps.find(
                    "./features/backup[@supported='yes']") is not None,
                qemu_owner=_dac_owner(caps, virt_type))
        except libvirt.libvirtError as e:
            raise exception.HypervisorError(
                action='read the host capabilities', instance_uuid='-',
                reason=e.get_error_message())


def _dac_owner(caps: ElementTree.Element,
               virt_type: str) -> Optional[Tuple[int, int]]:
    """uid and gid from the DAC security model's ``+uid:+gid`` label."""
    for model in caps.findall('./host/secmodel'):
        if model.findtext('model') != 'dac':
            continue
        for label in model.findall('baselabel'):
            if label.get('type') == virt_type and label.text:
                uid, gid = label.text.replace('+', '').split(':')
                return int(uid), int(gid)
    return None
