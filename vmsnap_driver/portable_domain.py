"""A domain XML brought from an archive: what it may hold, rewritten here.

The XML in an archive is untrusted input that libvirt would act on as root:
a disk source is a host file QEMU opens and writes, a kernel path a file it
reads, an interface script a program libvirt runs, a ``<qemu:commandline>``
anything at all.  So the XML may hold only what a portable guest needs, and
is checked against a list of what is allowed (what is not listed is
refused, naming it):

- its elements and devices are the common ones (no host devices, shared
  filesystems or memory, TPM, smartcards, scripts, nor anything in QEMU's
  namespace); ``<seclabel>`` and ``<emulator>`` are dropped, so that this
  host's security label and emulator apply;
- every disk is one the archive holds (by target) and is pointed at the
  file the import writes for it; any other disk (a host file, a block
  device, a network volume, a config drive) is refused;
- any other host path (a value that starts with ``/``) is kept only when
  it is there on this host: a file QEMU writes (a console log, a socket)
  needs its directory, any other (kernel, initrd, firmware, NVRAM, a
  device) must exist;
- the name is a plain name, and the UUID a UUID.
"""

import dataclasses
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Tuple
import uuid as uuidlib
from xml.etree import ElementTree

from oslo_utils import uuidutils

from vmsnap_driver import exception
from vmsnap_driver import ova

DOMAIN_ELEMENTS = frozenset([
    'name', 'uuid', 'genid', 'title', 'description', 'metadata', 'memory',
    'currentMemory', 'maxMemory', 'vcpu', 'vcpus', 'iothreads', 'cputune',
    'cpu', 'os', 'features', 'clock', 'on_poweroff', 'on_reboot',
    'on_crash', 'on_lockfailure', 'pm', 'devices', 'sysinfo', 'resource',
    'memoryBacking', 'numatune', 'blkiotune', 'memtune', 'perf',
])
DEVICE_ELEMENTS = frozenset([
    'disk', 'controller', 'interface', 'serial', 'console', 'channel',
    'parallel', 'input', 'graphics', 'video', 'sound', 'audio',
    'memballoon', 'rng', 'watchdog', 'panic', 'vsock', 'iommu',
])
# This host's own apply: the archived ones are dropped wherever they are.
DROPPED = ('seclabel', 'emulator')
# Reach into the host whatever their paths: refused.
REFUSED_ANYWHERE = ('script',)
REFUSED_TYPES = {'interface': ('hostdev', 'vdpa'),
                 'input': ('passthrough', 'evdev')}
# Files QEMU writes: only their directory must exist.
CHARDEVS = ('serial', 'console', 'parallel', 'channel')
WRITTEN_CHARDEV_TYPES = ('file', 'unix')
# Free text that is no path, whatever it starts with.
TEXT_ONLY = ('name', 'title', 'description', 'cmdline')
NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$')
MARKER_NAMESPACE = 'http://openstack.org/xmlns/vmsnap/import/1'


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The XML to define, and the identity it defines."""

    xml: str
    name: str
    uuid: str


def _refuse(reason: str) -> exception.ArchiveInvalid:
    return ova.invalid(ova.DOMAIN_XML, reason)


def check_name(name: str) -> None:
    """A domain name that is also safe in a file name."""
    if not NAME.match(name or ''):
        raise exception.ImportRefused(
            reason='%r is not a plain domain name (letters, digits, ".", '
                   '"_", "+", "-"; 64 at most)' % name)


def _walk(node: ElementTree.Element, where: str
          ) -> Iterator[Tuple[ElementTree.Element, str]]:
    for child in node:
        if not isinstance(child.tag, str):
            continue
        path = '%s<%s>' % (where, child.tag)
        yield child, path
        yield from _walk(child, path)


def _paths_of(node: ElementTree.Element, where: str,
              writes: bool) -> List[Tuple[str, str, bool]]:
    values = list(node.attrib.values())
    if node.tag not in TEXT_ONLY and (node.text or '').strip():
        values.append(node.text.strip())
    return [(where, v, writes) for v in values if v.startswith('/')]


def _host_paths(root: ElementTree.Element
                ) -> List[Tuple[str, str, bool]]:
    """Every host path but the disks': (where, path, QEMU writes it)."""
    found = []
    for section in root:
        if section.tag in ('metadata', 'devices'):
            continue
        where = '<%s>' % section.tag
        for node, path in [(section, where)] + list(_walk(section, where)):
            found += _paths_of(node, path, False)
    devices = root.find('devices')
    for device in devices if devices is not None else []:
        if device.tag == 'disk':
            continue
        output = (device.tag in CHARDEVS
                  and device.get('type') in WRITTEN_CHARDEV_TYPES)
        where = '<%s>' % device.tag
        for node, path in [(device, where)] + list(_walk(device, where)):
            writes = (node.tag == 'log' or device.tag == 'graphics'
                      or (node.tag == 'source' and output))
            found += _paths_of(node, path, writes)
    return found


def _check_elements(root: ElementTree.Element) -> None:
    for parent in [root] + [n for n, _w in _walk(root, '')]:
        if parent.tag == 'metadata':
            continue
        for child in list(parent):
            if child.tag in DROPPED:
                parent.remove(child)
            elif child.tag in REFUSED_ANYWHERE:
                raise _refuse('it has a <%s> in <%s>, which libvirt would '
                              'run on this host' % (child.tag, parent.tag))
    for node in root:
        if not isinstance(node.tag, str):
            continue
        if node.tag.startswith('{') or node.tag not in DOMAIN_ELEMENTS:
            raise _refuse('it has <%s>, which an import does not carry to '
                          'another host' % node.tag)
    devices = root.find('devices')
    for node in devices if devices is not None else []:
        if node.tag not in DEVICE_ELEMENTS:
            raise _refuse('it has a <%s> device, which an import does not '
                          'carry to another host' % node.tag)
        if node.get('type') in REFUSED_TYPES.get(node.tag, ()):
            raise _refuse('it has an <%s type=%r>, which reaches into the '
                          'host' % (node.tag, node.get('type')))


def _point_disks(root: ElementTree.Element, disks: Dict[str, str]) -> None:
    left = dict(disks)
    for node in root.findall('./devices/disk'):
        target = node.find('target')
        dev = target.get('dev') if target is not None else None
        source = node.find('source')
        named = ' '.join('%s=%s' % item for item in (
            source.attrib.items() if source is not None else []))
        if dev not in left:
            if node.get('device', 'disk') in ('cdrom', 'floppy') and (
                    not named):
                continue  # an empty drive names nothing
            raise _refuse('it has %s %s (%s), which is not one of the '
                          'archive\'s disks: vmsnap imports only the disks '
                          'it archived' % (node.get('device', 'disk'), dev,
                                           named or 'no source'))
        node.set('type', 'file')
        node.set('device', 'disk')
        for child in list(node):
            if child.tag in ('source', 'backingStore', 'auth', 'encryption'):
                node.remove(child)
        node.insert(1, ElementTree.Element('source', {'file': left.pop(dev)}))
        driver = node.find('driver')
        if driver is None:
            driver = ElementTree.SubElement(node, 'driver', {'name': 'qemu'})
        driver.set('type', 'qcow2')
    if left:
        raise _refuse('it has no disk %s, which the archive holds'
                      % ', '.join(sorted(left)))


def prepare(xml: str, disks: Callable[[str], Dict[str, str]],
            name: Optional[str], marker: str,
            exists: Callable[[str], bool] = os.path.exists) -> Prepared:
    """Check the archived XML and point its disks at the imported files.

    :param disks: given the domain's (checked) name, each archived disk's
        target and the file (qcow2) the import writes it into.
    :param name: a new name, which also gets a new UUID; the archived
        name and UUID when None.
    :param marker: written into the domain's metadata, so that only the
        domain this import defined is ever removed by it.
    """
    root = ova.parse_xml(ova.DOMAIN_XML, xml)
    if root.tag != 'domain':
        raise _refuse('it is not a libvirt domain')
    if not NAME.match(root.findtext('name') or '') or (
            not uuidutils.is_uuid_like(root.findtext('uuid') or '')):
        raise _refuse('its name %r or UUID %r is not a plain one; import '
                      'with --name' % (root.findtext('name'),
                                       root.findtext('uuid')))
    if name:
        check_name(name)
        _rename(root, name, str(uuidlib.uuid4()))
    _check_elements(root)
    _point_disks(root, disks(root.findtext('name')))
    for where, path, writes in _host_paths(root):
        needed = os.path.dirname(path) if writes else path
        if '/../' in path + '/' or not exists(needed):
            raise _refuse('%s names %s, and %s does not exist on this host: '
                          'create it, or edit the domain XML in the archive'
                          % (where, path, needed))
    metadata = root.find('metadata')
    if metadata is None:
        metadata = ElementTree.SubElement(root, 'metadata')
    ElementTree.SubElement(metadata, '{%s}import' % MARKER_NAMESPACE,
                           {'record': marker})
    return Prepared(xml=ElementTree.tostring(root, encoding='unicode'),
                    name=root.findtext('name'), uuid=root.findtext('uuid'))


def carries(xml: str, marker: str) -> bool:
    """Whether a defined domain is the one an import marked."""
    root = ElementTree.fromstring(xml)
    return any(node.get('record') == marker for node in root.iter(
        '{%s}import' % MARKER_NAMESPACE))


def _rename(root: ElementTree.Element, name: str, uuid: str) -> None:
    """A new identity, wherever the XML carries it.

    Nova writes the UUID into SMBIOS too, and libvirt refuses a domain
    whose two UUIDs differ.  The NVRAM file is the original's: the copy
    gets its own from the firmware's template.
    """
    root.find('name').text = name
    root.find('uuid').text = uuid
    for entry in root.findall("./sysinfo/system/entry[@name='uuid']"):
        entry.text = uuid
    for nvram in root.findall('./os/nvram'):
        nvram.text = None
