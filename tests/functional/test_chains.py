"""Incremental snapshot chains on real parts.

A running TCG guest writes known data between snapshots taken through the
real ``openstack`` client and vmsnap-compute; each delta holds about what
changed, and every point of the chain, rebuilt (flatten, verify, revert),
holds that point's bytes exactly: its digest, and the files the guest wrote
before it and not after, read from the rebuilt filesystem.
"""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import libvirt
import libvirt_qemu
import pytest

from tests.functional import checks
from tests.functional import testguest
from vmsnap_driver import chains
from vmsnap_driver import digest
from vmsnap_driver import engine
from vmsnap_driver import exception
from vmsnap_driver import glance as glance_mod
from vmsnap_driver import host as host_mod

BIN = os.path.dirname(sys.executable)
MIB = 1024 * 1024


@pytest.fixture
def guest(make_guest):
    guest = make_guest(agent=True)
    guest.start()
    return guest


@pytest.fixture
def cleanup(glance):
    """Delete the images a test made, parents unprotected first."""
    made = []
    yield made
    for image_id in reversed(made):
        try:
            glance.images.update(image_id, protected=False)
            glance.images.delete(image_id)
        except Exception:
            pass


def _snapshot(svc, guest, name, cleanup, *properties):
    image_id = svc.create_image(guest, name, *properties)
    cleanup.append(image_id)
    return image_id


def _write(guest, name, mib):
    """The guest writes MiB of random data to a file; its sha256."""
    code, out = guest.run(
        'dd if=/dev/urandom of=/mnt/%s bs=1M count=%d 2>/dev/null && sync '
        '&& sha256sum /mnt/%s' % (name, mib, name))
    assert code == 0, out
    return out.split()[0]


def _qmp(guest, command, **arguments):
    return json.loads(libvirt_qemu.qemuMonitorCommand(
        guest.dom, json.dumps({'execute': command, 'arguments': arguments}),
        0))['return']


def _bitmap_nodes(guest):
    """(node, bitmap) of the persistent dirty bitmaps QEMU holds."""
    return sorted({(node['node-name'], b['name'])
                   for node in _qmp(guest, 'query-named-block-nodes',
                                    flat=True)
                   if node.get('drv') == 'qcow2'
                   for b in node.get('dirty-bitmaps', [])
                   if b.get('persistent')})


def _bitmaps(guest):
    return [name for _node, name in _bitmap_nodes(guest)]


def _vmsnap(svc, *args):
    return subprocess.run([os.path.join(BIN, 'vmsnap'), '--config-file',
                           svc.config] + list(args), capture_output=True,
                          text=True, timeout=600)


def _files_in(glance, image_id, names, workdir):
    """The files' sha256 inside a full image's ext4 (None if absent)."""
    path = os.path.join(workdir, image_id)
    checks.download(glance, image_id, path)
    out = {}
    for name in names:
        try:
            found = testguest.read_ext4_files(path, 'qcow2', [name], workdir)
            out[name] = hashlib.sha256(found['files'][name]).hexdigest()
        except (subprocess.CalledProcessError, FileNotFoundError):
            out[name] = None
    os.unlink(path)
    return out


def _chain_started(conf, guest, queued_image):
    """The engine, Glance, the instance and the full image of a chain."""
    conf.set_override('incremental', True, group='libvirt')
    snapshots = engine.SnapshotEngine(
        host_mod.Host(conf.libvirt.connection_uri), conf.libvirt,
        conf.state_path)
    images = glance_mod.ImageService(conf)
    instance = checks.Instance(guest)
    full = queued_image()
    snapshots.take(instance, full, engine.no_task_state, images)
    return snapshots, images, instance, full


def test_a_chain_uploads_what_changed_and_every_point_restores(
        service, guest, glance, cleanup, workroot):
    svc = service()
    full = _snapshot(svc, guest, 'point-0', cleanup,
                     'vmsnap_incremental=true')
    a = _write(guest, 'a.bin', 4)
    first = _snapshot(svc, guest, 'point-1', cleanup,
                      'vmsnap_incremental=true')
    b = _write(guest, 'b.bin', 2)
    second = _snapshot(svc, guest, 'point-2', cleanup,
                       'vmsnap_incremental=true')
    images = [glance.images.get(i) for i in (full, first, second)]

    assert images[0]['vmsnap_delta'] == 'false'
    assert images[0]['vmsnap_chain_depth'] == '0'
    # The full image has both digests; a delta the tree digest alone, made
    # from its parent's block digests and the blocks that changed.
    assert images[0]['vmsnap_content_sha256']
    assert images[0]['vmsnap_content_tree_sha256']
    assert 'new chain: no earlier snapshot' in images[0]['vmsnap_mode_reason']
    assert 'vmsnap_parent_image_id' not in images[0]
    for depth, (parent, image) in enumerate(zip(images, images[1:]), 1):
        assert image["vmsnap_delta"] == "true", image["vmsnap_mode_reason"]
        assert image['vmsnap_chain_depth'] == str(depth)
        assert image['vmsnap_parent_image_id'] == parent['id']
        assert image['vmsnap_chain_id'] == images[0]['vmsnap_chain_id']
        assert image['vmsnap_checkpoint'] == 'vmsnap-' + image['id']
        assert 'incremental since snapshot %s' % parent['id'] in (
            image['vmsnap_mode_reason'])
        assert 'not bootable alone' in image['name']
        assert 'vmsnap_content_sha256' not in image
        assert image['vmsnap_content_tree_sha256'] != parent[
            'vmsnap_content_tree_sha256']
        assert glance.images.get(parent['id'])['protected'] is True
    # Each delta holds about what the guest wrote (plus filesystem
    # metadata, its counter and the qcow2's own tables); the full one
    # holds the whole filesystem.
    assert images[1]['size'] <= 4 * MIB * 1.2 + 2 * MIB
    assert images[2]['size'] <= 2 * MIB * 1.2 + 2 * MIB
    assert images[0]['size'] > images[1]['size'] > images[2]['size']
    # Between snapshots no checkpoint is defined in libvirt (it would stop
    # Nova from undefining the domain); the newest one's bitmap alone
    # stays in the qcow2.
    assert guest.dom.listAllCheckpoints() == []
    assert _bitmaps(guest) == ['vmsnap-' + second]

    # Every point, flattened, is a full image with that point's bytes.
    workdir = tempfile.mkdtemp(dir=workroot)
    for image, expected in ((images[1], {'a.bin': a, 'b.bin': None}),
                            (images[2], {'a.bin': a, 'b.bin': b})):
        result = _vmsnap(svc, 'flatten', image['id'], '--name', 'flat',
                         '--no-progress', '-f', 'value', '-c', 'id')
        assert result.returncode == 0, result.stderr
        flat_id = result.stdout.strip()
        cleanup.append(flat_id)
        flat = glance.images.get(flat_id)
        assert flat['vmsnap_content_tree_sha256'] == image[
            'vmsnap_content_tree_sha256']
        assert flat['vmsnap_content_sha256']
        assert flat['vmsnap_flattened_from'] == image['id']
        assert 'vmsnap_delta' not in flat and 'vmsnap_parent_image_id' not in (
            flat)
        assert _files_in(glance, flat_id, list(expected), workdir) == expected

    # verify rebuilds the chain under a delta and proves the point.
    result = _vmsnap(svc, 'verify', second, '--no-progress')
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'rebuilt from 3 images' in result.stdout

    # A point exports as its full disk, out of the chain.
    archive = os.path.join(workdir, 'point-2.ova')
    result = _vmsnap(svc, 'export', second, '--output', archive,
                     '--no-progress')
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tar:
        record = json.load(tar.extractfile('vmsnap.json'))
        tar.extract('disk-vda.qcow2', workdir)
    properties = record['images'][0]['properties']
    assert properties['vmsnap_flattened_from'] == second
    assert 'vmsnap_parent_image_id' not in properties
    assert digest.of_file(os.path.join(workdir, 'disk-vda.qcow2'), 'qcow2',
                          tree=True) == images[2][
                              'vmsnap_content_tree_sha256']

    # By the server's name, as the client takes it; records as JSON.
    result = _vmsnap(svc, 'chain', guest.name, '-f', 'json')
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r['depth'], r['image'], r['parent']) for r in rows] == [
        (0, full, None), (1, first, full), (2, second, first)]

    # Rebuild onto the middle point: the guest boots on that point's disk.
    svc.rebuild(guest, first)
    assert guest.run('sha256sum /mnt/a.bin')[1].split()[0] == a
    assert guest.run('test -e /mnt/b.bin')[0] == 1
    assert guest.boots() == 2
    # Its disk was replaced: the next incremental starts a new chain.
    after = _snapshot(svc, guest, 'after-revert', cleanup,
                      'vmsnap_incremental=true')
    image = glance.images.get(after)
    assert image['vmsnap_delta'] == 'false'
    assert 'reverted since snapshot %s' % second in image['vmsnap_mode_reason']
    assert image['vmsnap_chain_id'] != images[0]['vmsnap_chain_id']


def test_a_delta_is_refused_when_it_cannot_be_trusted(
        service, guest, glance, cleanup, conn):
    svc = service(libvirt={'max_chain_length': '3'})

    def take(name):
        image_id = _snapshot(svc, guest, name, cleanup,
                             'vmsnap_incremental=true')
        return glance.images.get(image_id)

    def full_because(image, words):
        assert image['vmsnap_delta'] == 'false', image['vmsnap_mode_reason']
        assert words in image['vmsnap_mode_reason']

    first = take('c0')
    # The checkpoint's bitmap removed behind vmsnap's back.
    for node, name in _bitmap_nodes(guest):
        assert name == first['vmsnap_checkpoint']
        _qmp(guest, 'block-dirty-bitmap-remove', node=node, name=name)
    full_because(take('c1'), 'is missing or not valid')

    # The domain destroyed, undefined and defined again, then started (as
    # Nova's hard reboot does): libvirt forgot the checkpoint, vmsnap
    # redefines it from its record and proves the bitmap: still a delta.
    xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                            libvirt.VIR_DOMAIN_XML_SECURE)
    guest.dom.destroy()
    guest.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    guest.dom = conn.defineXML(xml)
    assert guest.dom.listAllCheckpoints() == []
    guest.start()
    delta = take('c2')
    assert delta['vmsnap_delta'] == 'true', delta['vmsnap_mode_reason']

    # Saved and restored (managedsave, as a cold snapshot or a host
    # shutdown does): the bitmap went to the qcow2 and came back.
    guest.dom.managedSave(0)
    guest.dom.create()
    delta = take('c3')
    assert delta['vmsnap_delta'] == 'true', delta['vmsnap_mode_reason']
    assert delta['vmsnap_chain_depth'] == '2'

    # The chain holds max_chain_length (3) images: a new one starts.
    parent = take('c4')
    full_because(parent, 'already holds max_chain_length (3)')

    # Its parent deleted from Glance.
    glance.images.delete(parent['id'])
    full_because(take('c5'), 'is gone from Glance')


def test_a_failed_delta_leaves_the_chain_usable(
        conf, guest, glance, cleanup, queued_image, workroot):
    """An upload that fails mid-way: the next delta still proves equal."""
    snapshots, images, instance, full = _chain_started(conf, guest,
                                                       queued_image)

    class FailingUpload:
        def __getattr__(self, name):
            return getattr(images, name)

        def upload(self, *args, **kwargs):
            raise exception.GlanceUnavailable(reason='test')

    a = _write(guest, 'a.bin', 3)
    failed = queued_image()
    with pytest.raises(exception.GlanceUnavailable):
        snapshots.take(instance, failed, engine.no_task_state,
                       FailingUpload())
    assert guest.dom.listAllCheckpoints() == []
    assert _bitmaps(guest) == ['vmsnap-' + full]
    assert os.listdir(os.path.join(conf.state_path, 'operations')) == []

    retried = queued_image()
    snapshots.take(instance, retried, engine.no_task_state, images)
    image = glance.images.get(retried)
    assert image['vmsnap_delta'] == 'true'
    assert image['vmsnap_parent_image_id'] == full
    # Everything written since the full one, the failed attempt's window
    # included, is in the delta: the rebuilt point equals the guest's disk
    # at its instant.
    workdir = tempfile.mkdtemp(dir=workroot)
    point = chains.assemble(
        images, chains.lineage(images, images.get(retried)), workdir)
    assert digest.of_file(point, 'qcow2', tree=True) == image[
        'vmsnap_content_tree_sha256']
    flat = os.path.join(workdir, 'flat.raw')
    subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                    point, flat], check=True)
    found = testguest.read_ext4_files(flat, 'raw', ['a.bin'], workdir)
    assert hashlib.sha256(found['files']['a.bin']).hexdigest() == a
    glance.images.update(full, protected=False)


def test_a_delta_records_the_plain_sha256_when_the_operator_asks(
        conf, guest, glance, queued_image, workroot):
    """plain_content_digest = always: the whole disk's sha256, read again."""
    conf.set_override('plain_content_digest', 'always', group='libvirt')
    snapshots, images, instance, full = _chain_started(conf, guest,
                                                       queued_image)
    _write(guest, 'a.bin', 2)
    delta = queued_image()
    snapshots.take(instance, delta, engine.no_task_state, images)
    image = glance.images.get(delta)
    assert image['vmsnap_delta'] == 'true', image['vmsnap_mode_reason']
    workdir = tempfile.mkdtemp(dir=workroot)
    point = chains.assemble(images, chains.lineage(images, image), workdir)
    found = digest.of_point_file(point, 'qcow2', plain=True)
    assert image['vmsnap_content_sha256'] == found.sha256
    assert image['vmsnap_content_tree_sha256'] == found.tree
    glance.images.update(full, protected=False)


def test_a_memory_snapshot_starts_a_chain_the_next_delta_continues(
        service, guest, glance, cleanup):
    svc = service()
    memory = _snapshot(svc, guest, 'm0', cleanup, 'vmsnap_incremental=true',
                       'vmsnap_memory=true')
    image = glance.images.get(memory)
    cleanup.append(image['vmsnap_memory_image'])
    assert image['vmsnap_delta'] == 'false'
    assert image['vmsnap_chain_depth'] == '0'
    assert 'a memory snapshot starts a new chain' in (
        image['vmsnap_mode_reason'])
    _write(guest, 'm.bin', 1)
    delta = glance.images.get(_snapshot(svc, guest, 'm1', cleanup,
                                        'vmsnap_incremental=true'))
    assert delta['vmsnap_delta'] == 'true'
    assert delta['vmsnap_parent_image_id'] == memory
