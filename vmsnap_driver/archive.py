"""Export a snapshot as one OVA file; import one as images, and a guest.

OpenStack has no way to take a snapshot out with what it belongs to, or to
bring one back: an image alone loses the machine it came from.  An export
(:func:`plan_export`, then :meth:`Export.write`) gathers a snapshot's
group from Glance: every disk as a plain qcow2 (a chain point rebuilt as
its full disk), the memory state, the domain XML recorded at snapshot time
(:mod:`vmsnap_driver.domain_record`), and vmsnap's record of every image's
properties and links, into an OVA (:mod:`vmsnap_driver.ova`).  A full
image streams from Glance into the archive, its Glance hash checked on
the way: no copy of a disk is made.

An import (:func:`import_archive`) trusts nothing in the file: every
member is proven against the manifest, each disk inspected as untrusted,
the memory state's sha256 recomputed, the record's properties and the
domain XML checked (:mod:`vmsnap_driver.portable_domain`), all before
anything is created.  Then the images are created with their links
pointing at the new ids (the memory seal made with this host's key), and,
on request, the disks are written into a directory, proven against their
recorded digests, the domain defined and started: from the memory state
(it resumes) or booted.  Every image, file and domain it creates is in its
journal record first; a failure or a crash removes them all
(:func:`settle`): an import is whole or leaves nothing.
"""

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import struct
import uuid as uuidlib
from typing import (Any, Callable, ContextManager, Dict, Iterator, List,
                    Optional)
from xml.etree import ElementTree

from oslo_log import log as logging
from oslo_utils import uuidutils

import vmsnap_driver
from vmsnap_driver import chains
from vmsnap_driver import digest
from vmsnap_driver import domain_record
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import image_properties
from vmsnap_driver import image_safety
from vmsnap_driver import journal
from vmsnap_driver import memory_image
from vmsnap_driver import ova
from vmsnap_driver import portable_domain
from vmsnap_driver import qemu_img
from vmsnap_driver import streams

LOG = logging.getLogger(__name__)

KIND = 'import'
RECORD_FORMAT = 'vmsnap-snapshot'
RECORD_VERSION = 1
DISK, MEMORY = 'disk', 'memory'
IMPORTED_FROM_PROPERTY = 'vmsnap_imported_from'
# Properties whose value is the id of another image of the snapshot.
LINK_PROPERTIES = (memory_image.LINK_PROPERTY, memory_image.OF_PROPERTY)
# What an archive may not bring: a place in a chain of another host's
# checkpoints, and a seal made with another host's key.
DROPPED_PROPERTIES = chains.CHAIN_PROPERTIES + (memory_image.SEAL_PROPERTY,)
# Glance fields an image keeps through an export, besides its properties.
KEPT_FIELDS = ('disk_format', 'container_format', 'min_disk', 'min_ram',
               'os_hidden')
TARGET = re.compile(r'^[a-z][a-z0-9]{1,15}$')
QCOW2_MAGIC = b'QFI\xfb'

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


# -- export -----------------------------------------------------------------

@dataclasses.dataclass
class _Entry:
    """One image of the snapshot, as it goes into the archive."""

    image: dict
    role: str
    member: ova.Member
    target: Optional[str] = None
    capacity: int = 0
    properties: Optional[Dict[str, str]] = None

    def record(self) -> dict:
        fields = {key: self.image.get(key) for key in KEPT_FIELDS
                  if self.image.get(key) is not None}
        if self.role == DISK:
            fields['disk_format'] = 'qcow2'
        return dict(fields, id=self.image['id'], role=self.role,
                    target=self.target, member=self.member.name,
                    name=self.image.get('name') or '',
                    properties=self.properties)


@dataclasses.dataclass
class Export:
    """A snapshot gathered for export; :meth:`write` streams the OVA."""

    image: dict
    entries: List[_Entry]
    domain_xml: Optional[str]

    @functools.cached_property
    def members(self) -> List[ova.Member]:
        record = json.dumps({
            'format': RECORD_FORMAT, 'version': RECORD_VERSION,
            'vmsnap_version': vmsnap_driver.__version__,
            'exported_at': datetime.datetime.now(
                datetime.timezone.utc).isoformat(),
            'snapshot': self.image['id'],
            'images': [e.record() for e in self.entries],
        }, indent=2, sort_keys=True).encode()
        extra = [ova.small(ova.RECORD, record)]
        if self.domain_xml is not None:
            extra.insert(0, ova.small(ova.DOMAIN_XML,
                                      self.domain_xml.encode()))
        disks = [e for e in self.entries if e.role == DISK]
        vcpus, memory_mib = _hardware(self.domain_xml, self.entries)
        others = [e.member for e in self.entries if e.role != DISK] + extra
        descriptor = ova.descriptor(
            self.image.get('name') or self.image['id'],
            [ova.DiskInfo(e.target, e.member.name, e.member.size,
                          e.capacity) for e in disks],
            {m.name: m.size for m in others}, vcpus, memory_mib)
        name = ova.descriptor_name(self.image.get('name') or 'snapshot')
        return ([ova.small(name, descriptor)] + [e.member for e in disks]
                + others)

    def size(self) -> int:
        return sum(m.size for m in self.members)

    def write(self, out: Any, progress: Progress = _no_progress) -> None:
        """The OVA, front to back, into file object ``out``."""
        members = self.members
        writer = ova.Writer(out, any(m.size > ova.USTAR_MAX_SIZE
                                     for m in members), progress)
        for member in members:
            writer.add(member)
        writer.finish(members[0].name[:-len('.ovf')] + '.mf')
        LOG.info('Snapshot %(image)s exported: %(members)s',
                 {'image': self.image['id'],
                  'members': ', '.join(m.name for m in members)})


def plan_export(images: Any, image_id: str, workdir: str,
                progress: Progress = _no_progress) -> Export:
    """Gather snapshot ``image_id``; rebuild any chain point in ``workdir``.

    A full qcow2 image is not downloaded here: it streams into the archive
    when it is written.  A chain point, or a raw image, is made a full
    qcow2 in ``workdir`` first (``progress`` counts those downloads).
    """
    def refuse(reason: str) -> exception.ExportRefused:
        return exception.ExportRefused(image_id=image_id, reason=reason)

    image = images.get(image_id)
    if image.get(memory_image.OF_PROPERTY):
        raise refuse('it is the memory state of snapshot %s: export that '
                     'image' % image[memory_image.OF_PROPERTY])
    if image.get('status') != glance.ACTIVE:
        raise refuse('it is %s, not active' % image.get('status'))
    if not digest.recorded(image)[0] or not image.get('vmsnap_source_disk'):
        raise refuse('it is not a vmsnap snapshot')
    domain_xml = domain_record.read(image)
    if domain_xml is None:
        LOG.warning('Snapshot %s records no domain XML (taken by an older '
                    'vmsnap): its archive imports as images only',
                    image_id)
    entries = [_disk_entry(images, image['vmsnap_source_disk'], image,
                           workdir, progress)]
    for target, member_id in image_properties.group_members(image):
        member = images.get(member_id)
        if member.get(image_properties.GROUP_ID_PROPERTY) != image.get(
                image_properties.GROUP_ID_PROPERTY):
            raise refuse('image %s of disk %s belongs to another snapshot'
                         % (member_id, target))
        entries.append(_disk_entry(images, target, member, workdir,
                                   progress))
    if image.get(memory_image.LINK_PROPERTY):
        memory = images.get(image[memory_image.LINK_PROPERTY])
        if memory.get(memory_image.OF_PROPERTY) != image['id'] or (
                memory.get('status') != glance.ACTIVE):
            raise refuse('its memory image %s is not active or not its own'
                         % memory['id'])
        entries.append(_Entry(
            memory, MEMORY,
            ova.Member(ova.MEMORY, memory['size'],
                       _glance_chunks(images, memory)),
            properties=chains.unchained_properties(memory)))
    return Export(image, entries, domain_xml)


def _disk_entry(images: Any, target: str, image: dict, workdir: str,
                progress: Progress) -> _Entry:
    if not TARGET.match(target or ''):
        raise exception.ExportRefused(image_id=image['id'], reason='it '
                                      'records disk target %r' % target)
    lineage = chains.lineage(images, image)
    name = ova.disk_member(target)
    properties = chains.unchained_properties(image)
    if len(lineage) == 1 and image.get('disk_format') == 'qcow2':
        return _Entry(image, DISK, ova.Member(
            name, image['size'], _glance_chunks(images, image)),
            target=target, capacity=_capacity(images, image),
            properties=properties)
    if len(lineage) > 1:
        path, digests = chains.rebuild(images, lineage, workdir, progress)
        properties = dict(chains.flat_properties(image),
                          **digests.properties())
    else:
        path = chains.assemble(images, lineage, workdir, progress)
    if image.get('disk_format') != 'qcow2':
        converted = path + '.qcow2'
        qemu_img.convert(path, image['disk_format'], converted, 'qcow2',
                         untrusted=True)
        os.unlink(path)
        path = converted
    return _Entry(image, DISK, ova.Member(
        name, os.path.getsize(path), lambda: _file_chunks(path)),
        target=target,
        capacity=qemu_img.info(path, 'qcow2')[0].virtual_size,
        properties=properties)


def _glance_chunks(images: Any,
                   image: dict) -> Callable[[], Iterator[bytes]]:
    """The image's bytes; the last one only once Glance's hash holds."""
    def chunks() -> Iterator[bytes]:
        served = hashlib.new(image.get('os_hash_algo') or 'sha512')
        count = 0
        pending = None
        for chunk in images.data(image['id']):
            if pending:
                yield pending
            served.update(chunk)
            count += len(chunk)
            pending = chunk
        if count != image['size'] or image.get('os_hash_value') not in (
                None, served.hexdigest()):
            raise exception.ExportRefused(
                image_id=image['id'], reason='the bytes Glance served are '
                'not the ones it stored')
        if pending:
            yield pending
    return chunks


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, 'rb') as f:
        while True:
            data = f.read(ova.CHUNK)
            if not data:
                return
            yield data


def _capacity(images: Any, image: dict) -> int:
    """The disk's virtual size: Glance's, else the qcow2 header's."""
    if image.get('virtual_size'):
        return int(image['virtual_size'])
    head = b''
    chunks = images.data(image['id'])
    try:
        for chunk in chunks:
            head += chunk
            if len(head) >= 32:
                break
    finally:
        getattr(chunks, 'close', lambda: None)()
    if head[:4] != QCOW2_MAGIC or len(head) < 32:
        raise exception.ExportRefused(image_id=image['id'],
                                      reason='it is not a qcow2 image')
    return struct.unpack('>Q', head[24:32])[0]


def _hardware(domain_xml: Optional[str], entries: List[_Entry]) -> tuple:
    """Virtual CPUs and MiB of RAM, for the descriptor."""
    if domain_xml:
        root = ElementTree.fromstring(domain_xml)
        return (int(root.findtext('vcpu') or 1),
                guest_mod.memory_kib(root) // 1024)
    mib = [int(e.image.get('vmsnap_memory_mib') or 0) for e in entries]
    return 1, max(mib)


# -- import -----------------------------------------------------------------

@dataclasses.dataclass
class Imported:
    """What an import created: each image by target (or ``memory``)."""

    images: Dict[str, str]
    guest: Optional[guest_mod.Guest] = None
    resumed: bool = False


@dataclasses.dataclass
class DefineRequest:
    """Define (and start) the guest from the archive, disks in ``disk_dir``."""

    disk_dir: str
    start: bool = False
    name: Optional[str] = None


def _check_record(contents: ova.Contents) -> List[dict]:
    """The record's images, each checked; the boot disk first."""
    record = contents.record
    if not isinstance(record, dict) or record.get('format') != (
            RECORD_FORMAT) or record.get('version') != RECORD_VERSION:
        raise ova.invalid(ova.RECORD, 'it is not a version %d vmsnap record'
                          % RECORD_VERSION)
    entries = record.get('images')
    if not isinstance(entries, list) or not entries:
        raise ova.invalid(ova.RECORD, 'it lists no image')
    members, ids = set(), set()
    for entry in entries:
        _check_entry(contents, entry, members, ids)
    if entries[0]['role'] != DISK:
        raise ova.invalid(ova.RECORD, 'its first image is not the boot disk')
    targets = [e['target'] for e in entries if e['role'] == DISK]
    if len(set(targets)) != len(targets) or sum(
            e['role'] == MEMORY for e in entries) > 1:
        raise ova.invalid(ova.RECORD, 'it lists a disk twice, or two '
                                      'memory states')
    return entries


def _check_entry(contents: ova.Contents, entry: Any, members: set,
                 ids: set) -> None:
    if not isinstance(entry, dict):
        raise ova.invalid(ova.RECORD, 'an image entry is not an object')
    image_id, member = entry.get('id'), entry.get('member')
    if not isinstance(image_id, str) or not uuidutils.is_uuid_like(
            image_id) or image_id in ids:
        raise ova.invalid(ova.RECORD, 'image id %r is not one UUID'
                          % (image_id,))
    ids.add(image_id)
    if not isinstance(member, str) or member not in contents.members or (
            member in members):
        raise ova.invalid(ova.RECORD, 'image %s names member %r, which is '
                          'not in the archive once' % (image_id, member))
    members.add(member)
    name = entry.get('name')
    if not isinstance(name, str) or len(name) > 255:
        raise ova.invalid(ova.RECORD, 'image %s has no usable name'
                          % image_id)
    properties = entry.get('properties')
    if not isinstance(properties, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            and 0 < len(k) <= 255
            and len(v) <= image_properties.MAX_VALUE_LENGTH
            for k, v in properties.items()):
        raise ova.invalid(ova.RECORD, 'the properties of image %s are not '
                          'Glance properties' % image_id)
    bad = [k for k in properties if k.lower() in glance.CORE_FIELDS
           or k.lower().startswith('os_')]
    if bad:
        raise ova.invalid(ova.RECORD, 'image %s sets Glance\'s own '
                          'field(s) %s as properties'
                          % (image_id, ', '.join(sorted(bad))))
    for field in ('min_disk', 'min_ram'):
        if not isinstance(entry.get(field, 0), int) or entry.get(
                field, 0) < 0:
            raise ova.invalid(ova.RECORD, 'image %s has %s %r'
                              % (image_id, field, entry.get(field)))
    if entry.get('role') == DISK:
        if (not isinstance(entry.get('target'), str)
                or not TARGET.match(entry['target'])
                or entry.get('disk_format') != 'qcow2'
                or entry.get('container_format', 'bare') != 'bare'
                or not digest.recorded(properties)[0]):
            raise ova.invalid(member, 'the record does not describe it as '
                                      'a qcow2 disk with a target and a '
                                      'content digest')
    elif entry.get('role') == MEMORY:
        if not properties.get(memory_image.SHA256_PROPERTY):
            raise ova.invalid(member, 'the record gives no sha256 for the '
                                      'memory state')
    else:
        raise ova.invalid(ova.RECORD, 'image %s has role %r'
                          % (image_id, entry.get('role')))


def _memory_state(entry: dict) -> dict:
    """The memory entry as :mod:`memory_image` reads an image."""
    return dict(entry['properties'], id=entry['id'],
                container_format=memory_image.CONTAINER_FORMAT)


def _memory_mib(entry: dict, prepared: Optional[portable_domain.Prepared]
                ) -> int:
    """The MiB the state may decompress to (at most the domain's RAM)."""
    try:
        mib = int(entry['properties'].get('vmsnap_memory_mib') or 0)
    except ValueError:
        raise ova.invalid(entry['member'], 'the record gives no RAM size')
    if prepared:
        root = ElementTree.fromstring(prepared.xml)
        mib = min(mib, guest_mod.memory_kib(root) // 1024)
    return mib


def _check_members(contents: ova.Contents, entries: List[dict],
                   prepared: Optional[portable_domain.Prepared],
                   progress: Progress) -> None:
    """Each disk safe and holding its recorded content; the memory proven.

    A disk is inspected as untrusted, then read in place in the archive
    (qemu-nbd under limits) for its content digest.
    """
    for entry in entries:
        member = entry['member']
        if entry['role'] == MEMORY:
            try:
                memory_image.unpack(_memory_state(entry),
                                    contents.chunks(member, progress), None,
                                    _memory_mib(entry, prepared))
            except exception.ImageCorrupt as e:
                raise ova.invalid(member, str(e))
            continue
        problem = image_safety.problem_of(
            streams.ChunkReader(contents.chunks(member)), 'qcow2')
        if problem:
            raise ova.invalid(member, problem)
        expected, tree = digest.recorded(entry['properties'])
        try:
            actual = digest.of_file(
                contents.path, 'qcow2', untrusted=True, tree=tree,
                extent=(contents.offset(member), contents.size(member)))
        except exception.VmsnapException as e:
            raise ova.invalid(member, 'it cannot be read as a qcow2: %s'
                              % e)
        if actual != expected:
            raise ova.invalid(member, 'its content digest is %s, the '
                              'snapshot recorded %s' % (actual, expected))
        progress(contents.size(member))


def _properties(entry: dict, ids: Dict[str, str], instance_uuid: str,
                domain_xml: Optional[str]) -> Dict[str, str]:
    """An entry's properties, its links pointing at the new images."""
    properties = {k: v for k, v in entry['properties'].items()
                  if k not in DROPPED_PROPERTIES}
    for key in LINK_PROPERTIES:
        if key in properties:
            if properties[key] in ids:
                properties[key] = ids[properties[key]]
            else:
                del properties[key]
    if image_properties.GROUP_IMAGES_PROPERTY in properties:
        properties[image_properties.GROUP_IMAGES_PROPERTY] = (
            image_properties.group_value(
                [(t, ids[i]) for t, i in
                 image_properties.group_members(properties) if i in ids]))
    properties[IMPORTED_FROM_PROPERTY] = entry['id']
    if 'instance_uuid' in properties:
        properties['instance_uuid'] = instance_uuid
    if domain_xml is not None and properties.get(
            domain_record.PARTS_PROPERTY):
        properties = {k: v for k, v in properties.items()
                      if not k.startswith(domain_record.PREFIX)}
        properties.update(domain_record.properties(domain_xml))
    return properties


def import_archive(images: Any, host: Any, path: str, state_path: str,
                   seal_key: Callable[[], bytes],
                   define: Optional[DefineRequest] = None,
                   lock: Callable[[str], ContextManager] = (
                       lambda _uuid: contextlib.nullcontext()),
                   progress: Progress = _no_progress) -> Imported:
    """Import the OVA at ``path``; what it created.

    Everything is checked first (:func:`ova.read` proves the members);
    raises ArchiveInvalid or ImportRefused with nothing created, and
    removes whatever it created when a later step fails.  The creating
    runs under ``lock`` of the server the images belong to, as every
    operation that changes a server does.
    """
    if define and define.name:
        portable_domain.check_name(define.name)
    contents = ova.read(path, progress)
    entries = _check_record(contents)
    boot = entries[0]
    instance_uuid = boot['properties'].get('instance_uuid') or ''
    marker = str(uuidlib.uuid4())
    prepared = None
    files = {}
    if define:
        prepared = _prepare(host, define, contents, entries, marker, files)
        instance_uuid = prepared.uuid
    _check_members(contents, entries, prepared, progress)
    with lock(instance_uuid):
        record = journal.begin(state_path, KIND, instance_uuid, images=[],
                               files=[], domain=None, marker=marker,
                               committed=False)
        try:
            if define and not os.path.isdir(define.disk_dir):
                record.update(made_dir=os.path.abspath(define.disk_dir))
                os.makedirs(define.disk_dir, mode=0o755)
            # Sealed for this host only for the guest the import defines:
            # the operator restores that guest from this very state.
            imported = _create(images, contents, entries, record,
                               instance_uuid, seal_key if define else None,
                               prepared.xml if prepared else None, progress)
            if define:
                imported.guest, imported.resumed = _define(
                    host, define, contents, entries, prepared, files,
                    record, progress)
            record.update(committed=True)
        finally:
            if settle(host, images, record.facts):
                record.remove()
    return imported


def _prepare(host: Any, define: DefineRequest, contents: ova.Contents,
             entries: List[dict], marker: str,
             files: Dict[str, str]) -> portable_domain.Prepared:
    """The domain to define, checked against this host; fills ``files``."""
    if contents.domain_xml is None:
        raise exception.ImportRefused(
            reason='the archive holds no domain XML to define')
    if define.name and define.start and any(
            e['role'] == MEMORY for e in entries):
        # Measured on libvirt 9.0: "Target domain uuid ... does not match
        # source": the guest reads its UUID from SMBIOS.
        raise exception.ImportRefused(
            reason='a memory state resumes only in the domain UUID it was '
                   'saved with, and --name gives a new one: import without '
                   '--start and boot the guest, or without --name once the '
                   'original domain is gone')
    directory = os.path.realpath(define.disk_dir)

    def disk_files(name: str) -> Dict[str, str]:
        files.update({e['target']: os.path.join(
            directory, '%s-%s.qcow2' % (name, e['target']))
            for e in entries if e['role'] == DISK})
        return dict(files)
    prepared = portable_domain.prepare(contents.domain_xml, disk_files,
                                       define.name, marker)
    _check_free(host, prepared, files)
    return prepared


def _check_free(host: Any, prepared: portable_domain.Prepared,
                files: Dict[str, str]) -> None:
    """Nothing of this host's is in the way of what the import creates."""
    if host.has_domain(prepared.name, prepared.uuid):
        raise exception.ImportRefused(
            reason='a domain named %s or with UUID %s is defined here '
                   'already: import with --name NEW_NAME'
                   % (prepared.name, prepared.uuid))
    existing = [f for f in files.values() if os.path.lexists(f)]
    if existing:
        raise exception.ImportRefused(
            reason='%s exists already' % ', '.join(existing))


def _create(images: Any, contents: ova.Contents, entries: List[dict],
            record: journal.Record, instance_uuid: str,
            seal_key: Optional[Callable[[], bytes]],
            domain_xml: Optional[str], progress: Progress) -> Imported:
    """Every image, queued, then each uploaded with its links."""
    ids = {}
    for entry in entries:
        created = images.create(entry['name'] or entry['member'], {
            'os_hidden': bool(entry.get('os_hidden'))})
        record.update(images=record.facts['images'] + [created['id']])
        ids[entry['id']] = created['id']
    for entry in entries:
        image_id = ids[entry['id']]
        properties = _properties(entry, ids, instance_uuid, domain_xml)
        if entry['role'] == MEMORY and seal_key:
            properties[memory_image.SEAL_PROPERTY] = memory_image.seal(
                seal_key(), dict(properties, id=image_id),
                properties.get(memory_image.OF_PROPERTY, ''),
                instance_uuid)
        for field in ('min_disk', 'min_ram'):
            if entry.get(field):
                properties[field] = entry[field]
        formats = (('qcow2', 'bare') if entry['role'] == DISK else
                   (memory_image.DISK_FORMAT, memory_image.CONTAINER_FORMAT))
        images.upload(image_id, streams.ChunkReader(
            contents.chunks(entry['member'], progress)),
            contents.size(entry['member']), formats[0], properties,
            container_format=formats[1])
        LOG.info('Image %(new)s imported from %(member)s (was %(old)s)',
                 {'new': image_id, 'member': entry['member'],
                  'old': entry['id']})
    return Imported(images={e.get('target') or MEMORY: ids[e['id']]
                            for e in entries})


def _new_file(record: journal.Record, path: str) -> Any:
    """Create ``path`` (it must not exist), then record it as ours."""
    f = open(path, 'xb')
    record.update(files=record.facts['files'] + [path])
    return f


def _define(host: Any, define: DefineRequest, contents: ova.Contents,
            entries: List[dict], prepared: portable_domain.Prepared,
            files: Dict[str, str], record: journal.Record,
            progress: Progress) -> tuple:
    """Disks written (proven as they are read), the domain defined, started.

    The disks' content was proven in the archive; reading a member again
    proves it is the same bytes (:meth:`ova.Contents.chunks`).
    """
    for entry in entries:
        if entry['role'] != DISK:
            continue
        with _new_file(record, files[entry['target']]) as out:
            for data in contents.chunks(entry['member'], progress):
                out.write(data)
    # Checked again here, under the lock: libvirt would silently redefine
    # a domain of the same name and UUID.
    _check_free(host, prepared, {})
    record.update(domain=prepared.uuid)
    guest = host.define(prepared.xml)
    LOG.info('Domain %(name)s (%(uuid)s) defined from the archive',
             {'name': prepared.name, 'uuid': prepared.uuid})
    if not define.start:
        return guest, False
    memory = [e for e in entries if e['role'] == MEMORY]
    if not memory:
        guest.launch()
        return guest, False
    saved = os.path.join(os.path.dirname(files[entries[0]['target']]),
                         '.%s.memory' % prepared.name)
    _new_file(record, saved).close()
    record.update(temporary=saved)
    memory_image.unpack(_memory_state(memory[0]),
                        contents.chunks(memory[0]['member']), saved,
                        _memory_mib(memory[0], prepared))
    state = entries[0]['properties'].get(
        image_properties.GUEST_STATE_PROPERTY)
    guest.restore(saved, paused=state == guest_mod.PAUSED,
                  domain_xml=guest.inactive_xml())
    LOG.info('Domain %s resumed from the archived memory state',
             prepared.name)
    return guest, True


def settle(host: Any, images: Any, facts: dict) -> bool:
    """End an import from its record: whole, or nothing left of it.

    A committed import keeps everything but its temporary memory file;
    any other loses its domain (only the one it marked), files and images.
    Returns whether all of that is done.
    """
    done = True

    def remove(path: str) -> None:
        nonlocal done
        try:
            if os.path.lexists(path):
                os.unlink(path)
        except OSError as e:
            LOG.error('%(path)s of an import could not be removed: '
                      '%(error)s', {'path': path, 'error': e})
            done = False
    if facts.get('temporary'):
        remove(facts['temporary'])
    if facts.get('committed'):
        return done
    if facts.get('domain'):
        try:
            guest = host.get_guest(facts['domain'])
            if portable_domain.carries(guest.inactive_xml(),
                                       facts['marker']):
                if guest.state() != guest_mod.SHUTOFF:
                    guest.destroy()
                guest.undefine()
                LOG.info('Domain %s of the failed import undefined',
                         facts['domain'])
        except exception.InstanceNotFound:
            pass
        except exception.VmsnapException as e:
            LOG.error('The domain of a failed import could not be removed: '
                      '%s', e)
            done = False
    for path in facts.get('files', []):
        remove(path)
    for image_id in facts.get('images', []):
        images.delete(image_id)
        try:
            images.get(image_id)
        except exception.ImageNotFound:
            continue
        except exception.VmsnapException:
            pass
        LOG.error('Image %s of a failed import could not be deleted',
                  image_id)
        done = False
    made = facts.get('made_dir')
    if made and os.path.isdir(made) and not os.listdir(made):
        os.rmdir(made)
    return done
