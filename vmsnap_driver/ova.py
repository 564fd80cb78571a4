"""The OVA file: an OVF descriptor, the members, and a manifest, in a tar.

An OVA is a tar (POSIX ustar) whose first member is the OVF descriptor
(DMTF DSP0243).  vmsnap's holds, in this order: the descriptor; each disk
as a plain qcow2 (no backing or data-file reference); the memory state
(vmsnap's zstd-compressed libvirt save image) when there is one; the
libvirt domain XML at snapshot time; vmsnap's record (JSON: every image's
properties and how they link); and last the manifest (``.mf``,
``SHA256(name)= hex`` per member).  The manifest comes last because the
archive is written as one stream (to stdout, too) and a member's digest is
known only once it has gone by; OVF tools that check manifests read the
whole archive first.  A disk over 8 GiB needs the GNU size extension of
tar, which tar, libarchive and Python read.

Python's ``tarfile`` writes and reads the container; the descriptor is
written here, since no PyPI library writes OVF.  What the descriptor
says of the machine (CPUs, memory, disks and their capacities, in the
standard's RASD items) is for other OVF tools: vmsnap's import reads its
own record and the domain XML, and uses the descriptor only to check that
it names nothing outside the archive.
"""

import dataclasses
import hashlib
import json
import os
import re
import tarfile
from typing import Any, Callable, Dict, Iterator, List, Optional
from xml.etree import ElementTree

import defusedxml
from defusedxml import ElementTree as defused_etree

from vmsnap_driver import exception
from vmsnap_driver import streams

OVF = 'http://schemas.dmtf.org/ovf/envelope/1'
RASD = ('http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_ResourceAllocationSettingData')
VSSD = ('http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_VirtualSystemSettingData')
# The format URI oVirt and virt-v2v use for qcow2 disks in OVF.
QCOW2_FORMAT = 'http://www.gnome.org/~markmc/qcow-image-format.html'

DOMAIN_XML = 'domain.xml'
RECORD = 'vmsnap.json'
MEMORY = 'memory.zst'
# A member name: one plain file name, nothing a path could hide in.
MEMBER_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$')
# What the descriptor, the record, the domain XML and the manifest may
# weigh: a few KB each, read whole.
MAX_SMALL_MEMBER = 4 * 1024 * 1024
USTAR_MAX_SIZE = 8 ** 11 - 1
CHUNK = 4 * 1024 * 1024

# CIM resource types of the hardware items.
CPU, MEMORY_ITEM, OTHER_STORAGE, DISK = 3, 4, 20, 17

ElementTree.register_namespace('ovf', OVF)
ElementTree.register_namespace('rasd', RASD)
ElementTree.register_namespace('vssd', VSSD)


def disk_member(target: str) -> str:
    return 'disk-%s.qcow2' % target


@dataclasses.dataclass
class Member:
    """One member to write: its name, size, and bytes as chunks."""

    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]


@dataclasses.dataclass
class DiskInfo:
    target: str
    member: str
    size: int
    capacity: int


def _q(namespace: str, tag: str) -> str:
    return '{%s}%s' % (namespace, tag)


def _sub(parent: ElementTree.Element, tag: str, text: Optional[str] = None,
         namespace: str = OVF, **attrs: str) -> ElementTree.Element:
    node = ElementTree.SubElement(parent, _q(namespace, tag), {
        _q(OVF, k): v for k, v in attrs.items()})
    if text is not None:
        node.text = text
    return node


def _item(hardware: ElementTree.Element, fields: Dict[str, str]) -> None:
    # The schema wants RASD elements in alphabetical order.
    item = _sub(hardware, 'Item')
    for name in sorted(fields):
        _sub(item, name, fields[name], namespace=RASD)


def descriptor(name: str, disks: List[DiskInfo], others: Dict[str, int],
               vcpus: int, memory_mib: int) -> bytes:
    """The OVF descriptor of a snapshot's machine and files.

    :param others: every other member (but the manifest) and its size.
    """
    envelope = ElementTree.Element(_q(OVF, 'Envelope'),
                                   {_q(OVF, 'version'): '1.0'})
    references = _sub(envelope, 'References')
    for disk in disks:
        _sub(references, 'File', id='file-%s' % disk.target,
             href=disk.member, size=str(disk.size))
    for member, size in others.items():
        _sub(references, 'File', id=member, href=member, size=str(size))
    section = _sub(envelope, 'DiskSection')
    _sub(section, 'Info', 'The snapshot\'s disks, qcow2')
    for disk in disks:
        _sub(section, 'Disk', diskId=disk.target,
             fileRef='file-%s' % disk.target, capacity=str(disk.capacity),
             capacityAllocationUnits='byte', format=QCOW2_FORMAT)
    system = _sub(envelope, 'VirtualSystem', id=name)
    _sub(system, 'Info', 'A libvirt/QEMU guest, snapshot by vmsnap')
    _sub(system, 'Name', name)
    os_section = _sub(system, 'OperatingSystemSection', id='1')
    _sub(os_section, 'Info', 'The guest operating system is not recorded')
    hardware = _sub(system, 'VirtualHardwareSection')
    _sub(hardware, 'Info', 'Virtual hardware requirements')
    vsys = _sub(hardware, 'System')
    for tag, text in (('ElementName', 'Virtual Hardware Family'),
                      ('InstanceID', '0'),
                      ('VirtualSystemIdentifier', name),
                      ('VirtualSystemType', 'libvirt-qemu')):
        _sub(vsys, tag, text, namespace=VSSD)
    _item(hardware, {'AllocationUnits': 'hertz * 10^6',
                     'Description': 'Number of virtual CPUs',
                     'ElementName': '%d virtual CPU(s)' % vcpus,
                     'InstanceID': '1', 'ResourceType': str(CPU),
                     'VirtualQuantity': str(vcpus)})
    _item(hardware, {'AllocationUnits': 'byte * 2^20',
                     'Description': 'Memory size',
                     'ElementName': '%d MB of memory' % memory_mib,
                     'InstanceID': '2', 'ResourceType': str(MEMORY_ITEM),
                     'VirtualQuantity': str(memory_mib)})
    _item(hardware, {'Description': 'Disk controller',
                     'ElementName': 'virtio', 'InstanceID': '3',
                     'ResourceSubType': 'virtio',
                     'ResourceType': str(OTHER_STORAGE)})
    for index, disk in enumerate(disks):
        _item(hardware, {'AddressOnParent': str(index),
                         'ElementName': disk.target,
                         'HostResource': 'ovf:/disk/%s' % disk.target,
                         'InstanceID': str(4 + index), 'Parent': '3',
                         'ResourceType': str(DISK)})
    return ElementTree.tostring(envelope, encoding='UTF-8',
                                xml_declaration=True)


def descriptor_name(name: str) -> str:
    return '%s.ovf' % re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip(
        '._-')[:90] or 'snapshot'


def manifest(digests: Dict[str, str]) -> bytes:
    return ''.join('SHA256(%s)= %s\n' % item
                   for item in digests.items()).encode()


# -- writing ----------------------------------------------------------------

class Writer:
    """Writes members into a tar stream, hashing each as it goes by."""

    def __init__(self, out: Any, large: bool,
                 progress: Callable[[int], None] = lambda _n: None) -> None:
        self._tar = tarfile.open(
            fileobj=out, mode='w|', bufsize=CHUNK, copybufsize=CHUNK,
            format=tarfile.GNU_FORMAT if large else tarfile.USTAR_FORMAT)
        self._progress = progress
        self.digests: Dict[str, str] = {}

    def add(self, member: Member) -> None:
        info = tarfile.TarInfo(member.name)
        info.size = member.size
        info.mode = 0o644
        info.mtime = 0
        reader = streams.HashingReader(
            streams.ChunkReader(member.chunks(), self._progress))
        self._tar.addfile(info, reader)
        if reader.read(1):
            raise exception.ArchiveInvalid(
                member=member.name, reason='its source holds more than the '
                '%d bytes it declared' % member.size)
        self.digests[member.name] = reader.hash.hexdigest()

    def finish(self, manifest_name: str) -> None:
        data = manifest(self.digests)
        self.add(Member(manifest_name, len(data), lambda: iter([data])))
        self._tar.close()


def small(name: str, data: bytes) -> Member:
    return Member(name, len(data), lambda: iter([data]))


# -- reading ----------------------------------------------------------------

@dataclasses.dataclass
class Contents:
    """An archive whose every member was proven against its manifest."""

    path: str
    members: Dict[str, tarfile.TarInfo]
    descriptor: ElementTree.Element
    record: dict
    domain_xml: Optional[str]
    digests: Dict[str, str]

    def size(self, name: str) -> int:
        return self.members[name].size

    def offset(self, name: str) -> int:
        """Where a member's bytes start in the archive file."""
        return self.members[name].offset_data

    def chunks(self, name: str,
               progress: Callable[[int], None] = lambda _n: None
               ) -> Iterator[bytes]:
        """A member's bytes, proven again as they are read.

        The file could change after :func:`read` proved it: the last
        chunk is given only once the whole member matches its digest.
        """
        info = self.members[name]
        hashed = hashlib.sha256()
        left = info.size
        with open(self.path, 'rb') as f:
            f.seek(info.offset_data)
            while left:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise invalid(name, 'the archive was truncated')
                left -= len(data)
                hashed.update(data)
                if not left and hashed.hexdigest() != self.digests[name]:
                    raise invalid(name, 'it changed since it was checked')
                progress(len(data))
                yield data


def invalid(member: str, reason: str) -> exception.ArchiveInvalid:
    return exception.ArchiveInvalid(member=member, reason=reason)


def parse_manifest(data: bytes) -> Dict[str, str]:
    digests = {}
    for line in data.decode('ascii', 'replace').splitlines():
        if not line.strip():
            continue
        found = re.match(r'^SHA256\((.+)\)= ?([0-9a-fA-F]{64})$',
                         line.strip())
        if not found:
            raise invalid('manifest', 'line %r is not "SHA256(name)= hex"'
                          % line[:80])
        digests[found.group(1)] = found.group(2).lower()
    return digests


def parse_xml(name: str, data: Any) -> ElementTree.Element:
    """Untrusted XML: no DTD, no entities (defusedxml), or ArchiveInvalid."""
    try:
        return defused_etree.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as e:
        raise invalid(name, 'it declares a DTD or entities, which vmsnap '
                            'never writes (%s)' % type(e).__name__)
    except ElementTree.ParseError as e:
        raise invalid(name, 'it is not well-formed XML: %s' % e)


def _check_descriptor(name: str, root: ElementTree.Element,
                      members: Dict[str, tarfile.TarInfo]) -> None:
    """The descriptor is OVF and names only files of the archive."""
    if root.tag != _q(OVF, 'Envelope'):
        raise invalid(name, 'it is not an OVF envelope (%s)' % root.tag)
    files = {}
    for node in root.iter(_q(OVF, 'File')):
        href = node.get(_q(OVF, 'href')) or ''
        if not MEMBER_NAME.match(href) or href not in members:
            raise invalid(name, 'it names file %r, which is not a member '
                                'of the archive' % href)
        files[node.get(_q(OVF, 'id'))] = href
    for node in root.iter(_q(OVF, 'Disk')):
        if node.get(_q(OVF, 'fileRef')) not in files:
            raise invalid(name, 'disk %r refers to no file of the archive'
                          % node.get(_q(OVF, 'diskId')))


def _size_field(field: bytes) -> int:
    """A tar size: octal, or GNU base-256 for 8 GiB and more."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], 'big')
    text = field.rstrip(b'\0 ').strip()
    return int(text or b'0', 8)


def _scan_headers(path: str) -> None:
    """Every member is a plain file: refused before tarfile reads any.

    tarfile reads pax and GNU long-name headers whole, however large they
    claim to be, and follows hard and symbolic links: an OVA needs none of
    them, so a header of any other type is refused here.
    """
    with open(path, 'rb') as f:
        total = os.fstat(f.fileno()).st_size
        while True:
            header = f.read(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE or header == bytes(
                    tarfile.BLOCKSIZE):
                return
            name = header[:100].split(b'\0')[0].decode('utf-8', 'replace')
            if header[156:157] not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise invalid(name or path, 'it is not a regular file (tar '
                              'type %r)' % header[156:157])
            try:
                size = _size_field(header[124:136])
            except ValueError:
                raise invalid(name or path, 'its tar header is corrupt')
            blocks = -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if f.tell() + blocks > total:
                raise invalid(name or path, 'the archive is corrupt or '
                              'truncated: it ends inside this member')
            f.seek(blocks, os.SEEK_CUR)


def read(path: str, progress: Callable[[int], None] = lambda _n: None
         ) -> Contents:
    """Open an OVA and prove every member against its manifest.

    Reads the whole file once; raises ArchiveInvalid naming the member at
    fault for anything that is not a vmsnap OVA whose members all match.
    """
    members: Dict[str, tarfile.TarInfo] = {}
    digests: Dict[str, str] = {}
    small_data: Dict[str, bytes] = {}
    try:
        _scan_headers(path)
        with tarfile.open(path, 'r:') as tar:
            for info in tar:
                name = info.name
                if not MEMBER_NAME.match(name):
                    raise invalid(name, 'it is not a plain file name')
                if not info.isreg() or info.issparse():
                    raise invalid(name, 'it is not a regular file')
                if name in members:
                    raise invalid(name, 'it appears twice')
                if not members and not name.endswith('.ovf'):
                    raise invalid(name, 'an OVA starts with its OVF '
                                        'descriptor')
                if members and name.endswith('.ovf') or name.endswith(
                        '.mf') and any(n.endswith('.mf') for n in members):
                    raise invalid(name, 'an OVA has one descriptor and one '
                                        'manifest')
                members[name] = info
                hashed = hashlib.sha256()
                f = tar.extractfile(info)
                keep = (name.endswith(('.ovf', '.mf'))
                        or name in (RECORD, DOMAIN_XML))
                if keep and info.size > MAX_SMALL_MEMBER:
                    raise invalid(name, 'it is larger than %d bytes'
                                  % MAX_SMALL_MEMBER)
                kept = []
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        break
                    hashed.update(data)
                    progress(len(data))
                    if keep:
                        kept.append(data)
                if keep:
                    small_data[name] = b''.join(kept)
                digests[name] = hashed.hexdigest()
    except (tarfile.TarError, EOFError) as e:
        where = list(members)[-1] if members else path
        raise invalid(where, 'the archive is corrupt or truncated: %s' % e)
    except OSError as e:
        raise invalid(path, 'it cannot be read: %s' % e)
    if not members:
        raise invalid(path, 'the archive is empty')
    manifests = [n for n in members if n.endswith('.mf')]
    if len(manifests) != 1:
        raise invalid(path, 'an archive needs exactly one manifest (.mf), '
                            'it has %d' % len(manifests))
    listed = parse_manifest(small_data[manifests[0]])
    for name in members:
        if name == manifests[0]:
            continue
        if name not in listed:
            raise invalid(name, 'it is not in the manifest')
        if listed[name] != digests[name]:
            raise invalid(name, 'its sha256 is %s, the manifest says %s'
                          % (digests[name], listed[name]))
    for name in listed:
        if name not in members:
            raise invalid(name, 'the manifest lists it, the archive lacks '
                                'it')
    first = next(iter(members))
    root = parse_xml(first, small_data[first])
    _check_descriptor(first, root, members)
    if RECORD not in members:
        raise invalid(RECORD, 'the archive has no vmsnap record')
    try:
        record = json.loads(small_data[RECORD])
    except (ValueError, RecursionError) as e:
        raise invalid(RECORD, 'it is not JSON: %s' % e)
    domain_xml = small_data.get(DOMAIN_XML)
    if domain_xml is not None:
        try:
            domain_xml = domain_xml.decode('utf-8')
        except UnicodeDecodeError:
            raise invalid(DOMAIN_XML, 'it is not UTF-8')
        parse_xml(DOMAIN_XML, domain_xml)
    return Contents(path=path, members=members, descriptor=root,
                    record=record, digests=digests, domain_xml=domain_xml)
