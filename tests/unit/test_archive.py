"""The OVA format, the recorded domain XML and its rewrite on import."""

import io
import json
import os
import tarfile
from xml.etree import ElementTree

import pytest

from vmsnap_driver import domain_record
from vmsnap_driver import exception
from vmsnap_driver import ova
from vmsnap_driver import portable_domain
from vmsnap_driver import streams

XML = """<domain type='qemu'>
  <name>vm</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='MiB'>256</memory>
  <sysinfo type='smbios'><system>
    <entry name='uuid'>11111111-2222-3333-4444-555555555555</entry>
  </system></sysinfo>
  <os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/nova/instances/x/disk'/>
      <backingStore type='file'><source file='/base'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    <serial type='file'><source path='/var/log/vm/console.log'/></serial>
  </devices>
</domain>"""


def test_the_domain_xml_round_trips_through_properties():
    big = '<domains>%s</domains>' % (XML * 20)
    props = domain_record.properties(big)
    assert all(len(v) <= 255 for v in props.values())
    assert domain_record.read(dict(props, id='i')) == big
    assert domain_record.read({'id': 'i'}) is None


def test_an_edited_domain_xml_part_is_refused():
    props = domain_record.properties(XML)
    props['vmsnap_domain_xml_00'] = props['vmsnap_domain_xml_00'][::-1]
    with pytest.raises(exception.ImageCorrupt):
        domain_record.read(dict(props, id='i'))


def test_a_domain_xml_too_large_for_glance_is_not_recorded():
    assert domain_record.properties(os.urandom(20000).hex()) == {}


def _exists(path):
    return path in ('/boot/vmlinuz', '/var/log/vm')


def test_disks_are_pointed_at_the_imported_files():
    prepared = portable_domain.prepare(
        XML, lambda name: {'vda': '/new/%s-vda.qcow2' % name}, None, 'm',
        exists=_exists)
    root = ElementTree.fromstring(prepared.xml)
    disk = root.find('./devices/disk')
    assert disk.find('source').get('file') == '/new/vm-vda.qcow2'
    assert disk.find('backingStore') is None
    assert disk.find('driver').get('cache') == 'none'
    assert (prepared.name, prepared.uuid) == (
        'vm', '11111111-2222-3333-4444-555555555555')
    assert portable_domain.carries(prepared.xml, 'm')
    assert not portable_domain.carries(prepared.xml, 'other')


def test_host_labels_and_emulators_are_dropped():
    xml = XML.replace('</devices>', '<emulator>/tmp/qemu</emulator>'
                      '</devices><seclabel model="dac"><label>+0:+0</label>'
                      '</seclabel>')
    prepared = portable_domain.prepare(xml, lambda _n: {'vda': '/n'}, None,
                                       'm', exists=_exists)
    assert 'seclabel' not in prepared.xml and '/tmp/qemu' not in prepared.xml


def test_a_new_name_gets_a_new_uuid_everywhere():
    prepared = portable_domain.prepare(XML, lambda _n: {'vda': '/n'}, 'copy',
                                       'm', exists=_exists)
    root = ElementTree.fromstring(prepared.xml)
    assert prepared.name == 'copy'
    assert prepared.uuid != '11111111-2222-3333-4444-555555555555'
    assert root.findtext('./sysinfo/system/entry') == prepared.uuid


@pytest.mark.parametrize('edit, refusal', [
    (lambda x: x.replace("<target dev='hdc' bus='ide'/>",
                         "<source file='/etc/shadow'/><target dev='hdc'/>"),
     'cdrom hdc (file=/etc/shadow)'),
    (lambda x: x.replace('/boot/vmlinuz', '/elsewhere/vmlinuz'),
     '<os><kernel> names /elsewhere/vmlinuz'),
    (lambda x: x.replace('/var/log/vm/console.log', '/gone/console.log'),
     '/gone does not exist'),
    (lambda x: x.replace("dev='vda'", "dev='vdz'"), 'disk vdz'),
    (lambda x: x.replace('</devices>', "<hostdev mode='subsystem'/>"
                         '</devices>'), 'a <hostdev> device'),
    (lambda x: x.replace('</devices>', "<interface type='bridge'><script "
                         "path='/bin/true'/></interface></devices>"),
     '<script>'),
    (lambda x: x.replace('</domain>', '<qemu:commandline xmlns:qemu="http:'
                         '//libvirt.org/schemas/domain/qemu/1.0"/>'
                         '</domain>'), 'commandline'),
    (lambda x: x.replace('<name>vm</name>', '<name>../../etc/x</name>'),
     'not a plain one'),
])
def test_what_the_archive_does_not_hold_is_refused(edit, refusal):
    with pytest.raises(exception.ArchiveInvalid) as e:
        portable_domain.prepare(edit(XML), lambda _n: {'vda': '/n'}, None,
                                'm', exists=_exists)
    assert refusal in str(e.value)
    assert 'domain.xml' in str(e.value)


def _archive(tmp_path, members, manifest=True):
    out = io.BytesIO()
    writer = ova.Writer(out, large=False)
    for name, data in members:
        writer.add(ova.small(name, data))
    if manifest:
        writer.finish('x.mf')
    else:
        writer._tar.close()
    path = tmp_path / 'a.ova'
    path.write_bytes(out.getvalue())
    return str(path)


def _descriptor(hrefs):
    disks = [ova.DiskInfo('vda', 'disk-vda.qcow2', 3, 1024)]
    return ova.descriptor('vm', disks, {h: 1 for h in hrefs}, 2, 256)


def test_an_archive_round_trips_and_its_descriptor_is_ovf(tmp_path):
    record = json.dumps({'images': []}).encode()
    path = _archive(tmp_path, [('x.ovf', _descriptor([ova.RECORD])),
                               ('disk-vda.qcow2', b'abc'),
                               (ova.RECORD, record)])
    contents = ova.read(path)
    assert contents.record == {'images': []}
    assert b''.join(contents.chunks('disk-vda.qcow2')) == b'abc'
    root = contents.descriptor
    disk = root.find('.//{%s}Disk' % ova.OVF)
    assert disk.get('{%s}capacity' % ova.OVF) == '1024'
    with tarfile.open(path) as tar:
        assert tar.getnames()[-1] == 'x.mf'


@pytest.mark.parametrize('members, refusal', [
    ([('disk-vda.qcow2', b'abc')], 'starts with its OVF descriptor'),
    ([('x.ovf', b'<a/>'), ('../escape', b'')], 'not a plain file name'),
    ([('x.ovf', _descriptor(['../../etc/passwd'])),
      ('disk-vda.qcow2', b'abc')], "'../../etc/passwd'"),
    ([('x.ovf', b'<!DOCTYPE x [<!ENTITY a "b">]><x/>')], 'DTD'),
])
def test_a_bad_archive_is_refused(tmp_path, members, refusal):
    with pytest.raises(exception.ArchiveInvalid) as e:
        ova.read(_archive(tmp_path, members))
    assert refusal in str(e.value)


def test_a_member_outside_the_manifest_is_refused(tmp_path):
    path = _archive(tmp_path, [('x.ovf', b'<a/>')], manifest=False)
    with pytest.raises(exception.ArchiveInvalid) as e:
        ova.read(path)
    assert 'exactly one manifest' in str(e.value)


def test_a_chunk_reader_gives_whole_reads_across_chunks():
    seen = []
    reader = streams.ChunkReader([b'abc', b'', b'defgh', b'ij'], seen.append)
    assert reader.read(4) == b'abcd'
    assert reader.read(2) == b'ef'
    assert reader.read(10) == b'ghij'
    assert reader.read(1) == b''
    assert sum(seen) == 10


def test_a_domain_xml_rewritten_with_entities_is_refused():
    xml = '<!DOCTYPE d [<!ENTITY a "b">]><domain>&a;</domain>'
    with pytest.raises(exception.ImageCorrupt):
        domain_record.read(dict(domain_record.properties(xml), id='i'))
