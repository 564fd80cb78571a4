"""The connection to the local libvirtd and what its hypervisor can do."""

import dataclasses
import threading
from typing import Tuple

import libvirt
from oslo_log import log as logging

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod

LOG = logging.getLogger(__name__)


def _ignore_libvirt_error(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we raise instead."""


def _version_tuple(packed: int) -> Tuple[int, int, int]:
    return (packed // 1000000, packed // 1000 % 1000, packed % 1000)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the snapshot mode decision needs to know about this host."""

    hypervisor: str
    libvirt_version: Tuple[int, int, int]
    hypervisor_version: Tuple[int, int, int]


class Host:
    """A lazily opened, re-opened-when-dead libvirt connection."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn = None
        self._lock = threading.Lock()

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
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

    def get_guest(self, instance_uuid: str) -> guest_mod.Guest:
        conn = self._connection()
        try:
            return guest_mod.Guest(conn.lookupByUUIDString(instance_uuid))
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
            return [guest_mod.Guest(dom) for dom in conn.listAllDomains(0)]
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
            return guest_mod.Guest(conn.lookupByName(name_or_uuid))
        except libvirt.libvirtError:
            raise exception.InstanceNotFound(instance_uuid=name_or_uuid,
                                             uri=self.uri)

    def capabilities(self) -> Capabilities:
        conn = self._connection()
        try:
            return Capabilities(
                hypervisor=conn.getType(),
                libvirt_version=_version_tuple(conn.getLibVersion()),
                hypervisor_version=_version_tuple(conn.getVersion()))
        except libvirt.libvirtError as e:
            raise exception.HypervisorError(
                action='read the host capabilities', instance_uuid='-',
                reason=e.get_error_message())
