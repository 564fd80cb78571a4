"""A domain XML brought from an archive: what it may name, rewritten here.

The XML in an archive is untrusted input that libvirt would act on: a disk
source is a host file QEMU opens and writes, a kernel or NVRAM path is a
host file it reads.  So every disk must be one the archive holds (by its
target) and is pointed at the file the import writes for it; a disk the
archive does not hold (a host file, a block device, a network volume, a
config drive) is refused.  Any other host path is kept only when it is
there on this host: a file QEMU reads (kernel, initrd, DTB, firmware,
NVRAM, a device) must exist, a file QEMU writes (a console log, a socket)
needs its directory.  Anything else is refused before anything is created,
naming the element and the path.
"""

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Tuple
import uuid as uuidlib
from xml.etree import ElementTree

from vmsnap_driver import exception
from vmsnap_driver import ova

# Files QEMU writes: only their directory must exist.
WRITTEN_CHARDEV_TYPES = ('file', 'unix')
CHARDEVS = ('serial', 'console', 'parallel', 'channel')
# Host paths in <os>: read by QEMU or the firmware.
OS_PATHS = ('kernel', 'initrd', 'dtb', 'loader', 'nvram')


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The XML to define, and the identity it defines."""

    xml: str
    name: str
    uuid: str


def _refuse(reason: str) -> exception.ArchiveInvalid:
    return exception.ArchiveInvalid(member=ova.DOMAIN_XML, reason=reason)


def host_paths(root: ElementTree.Element
               ) -> List[Tuple[str, str, bool]]:
    """Every host path outside the disks: (where, path, QEMU writes it)."""
    found = []
    for tag in OS_PATHS:
        for node in root.findall('./os/%s' % tag):
            if (node.text or '').strip():
                found.append(('<os><%s>' % tag, node.text.strip(), False))
    devices = root.find('devices')
    for node in devices if devices is not None else []:
        if node.tag == 'disk':
            continue
        writes = (node.tag in CHARDEVS
                  and node.get('type') in WRITTEN_CHARDEV_TYPES)
        for source in node.iter('source'):
            for attr in ('path', 'file', 'dir', 'dev', 'socket'):
                if source.get(attr):
                    found.append(('<%s>' % node.tag, source.get(attr),
                                  writes))
        for log in node.iter('log'):
            if log.get('file'):
                found.append(('<%s><log>' % node.tag, log.get('file'),
                              True))
        if node.get('socket'):
            found.append(('<%s>' % node.tag, node.get('socket'), True))
    return found


def prepare(xml: str, disks: Dict[str, str], name: Optional[str],
            exists: Callable[[str], bool] = os.path.exists) -> Prepared:
    """Check the archived XML and point its disks at ``disks``' files.

    :param disks: each archived disk's target and the file (qcow2) the
        import writes it into.
    :param name: a new name, which also gets a new UUID; the archived
        name and UUID when None.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise _refuse('the domain XML does not parse: %s' % e)
    if root.tag != 'domain' or not root.findtext('name') or not (
            root.findtext('uuid')):
        raise _refuse('it is not a libvirt domain with a name '
                      'and a UUID')
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
            raise _refuse('the domain XML has %s %s (%s), which is not one '
                          'of the archive\'s disks: vmsnap imports only '
                          'the disks it archived' % (
                              node.get('device', 'disk'), dev,
                              named or 'no source'))
        node.set('type', 'file')
        for child in list(node):
            if child.tag in ('source', 'backingStore'):
                node.remove(child)
        source = ElementTree.Element('source', {'file': left.pop(dev)})
        node.insert(1, source)
        driver = node.find('driver')
        if driver is None:
            driver = ElementTree.SubElement(node, 'driver', {'name': 'qemu'})
        driver.set('type', 'qcow2')
    if left:
        raise _refuse('the domain XML has no disk %s, which the archive '
                      'holds' % ', '.join(sorted(left)))
    for where, path, writes in host_paths(root):
        if not os.path.isabs(path):
            raise _refuse('%s names %r, which is not an absolute path'
                          % (where, path))
        needed = os.path.dirname(path) if writes else path
        if not exists(needed):
            raise _refuse('%s names %s, and %s does not exist on this host: '
                          'create it, or edit the domain XML in the archive'
                          % (where, path, needed))
    if name:
        _rename(root, name, str(uuidlib.uuid4()))
    return Prepared(xml=ElementTree.tostring(root, encoding='unicode'),
                    name=root.findtext('name'), uuid=root.findtext('uuid'))


def _rename(root: ElementTree.Element, name: str, uuid: str) -> None:
    """A new identity, wherever the XML carries it.

    Nova writes the UUID into SMBIOS too, and libvirt refuses a domain
    whose two UUIDs differ.
    """
    root.find('name').text = name
    root.find('uuid').text = uuid
    for entry in root.findall("./sysinfo/system/entry[@name='uuid']"):
        entry.text = uuid
