"""Where a snapshot goes in its chain, and why a delta is refused."""

import dataclasses
import types
from unittest import mock

import pytest

from vmsnap_driver import chains
from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod

DISK = guest_mod.Disk('vda', 'file', '/d.qcow2', 'qcow2', False)
SIZE = 1 << 30
PARENT = '4f1b0c4e-0d1a-4e3b-9a55-2f6f1d3c8b71'
OPTIONS = types.SimpleNamespace(incremental=False, max_chain_length=7)


def _parent(**changes):
    image = {'id': 'p', 'status': 'active', 'vmsnap_checkpoint': 'vmsnap-p',
             'vmsnap_chain_id': 'c'}
    image.update(changes)
    return image


def _plan(tmp_path, record=None, parent=None, disks=(DISK,),
          method='backup', image_format='qcow2', memory=False,
          asked='true', size=SIZE, guest=None):
    state = str(tmp_path)
    guest = guest or mock.Mock(uuid='u-1')
    if record is not None:
        chains._write(state, 'u-1', dict({
            'chain_id': 'c', 'image_id': 'p', 'depth': 0,
            'checkpoint': 'vmsnap-p', 'checkpoint_xml': '<x/>',
            'disk': 'vda', 'path': '/d.qcow2', 'virtual_size': SIZE},
            **record))
    images = mock.Mock()
    if parent is None:
        images.get.side_effect = exception.ImageNotFound(image_id='p')
    else:
        images.get.return_value = parent
    request = {'id': 'new', 'name': 'n'}
    if asked is not None:
        request['vmsnap_incremental'] = asked
    return chains.plan(guest, images, state, OPTIONS, request, list(disks),
                       size, method, image_format, memory)


def test_not_asked_for_is_no_chain(tmp_path):
    link = _plan(tmp_path, asked=None)
    assert not link.requested and link.properties() == {}


@pytest.mark.parametrize('kwargs, words', [
    ({'disks': (DISK, DISK)}, 'a chain follows one disk'),
    ({'method': 'managedsave'}, 'taken by managedsave'),
    ({'disks': (dataclasses.replace(DISK, format='raw'),)},
     'only a qcow2 disk'),
    ({'image_format': 'raw'}, 'a delta is a qcow2 image'),
])
def test_outside_any_chain(tmp_path, kwargs, words):
    link = _plan(tmp_path, **kwargs)
    assert link.checkpoint is None and not link.delta
    assert words in link.reason
    assert link.properties() == {'vmsnap_delta': 'false'}


@pytest.mark.parametrize('record, parent, words', [
    (None, _parent(), 'no earlier snapshot'),
    ({'reverted': True}, _parent(), 'reverted since snapshot p'),
    ({'virtual_size': SIZE // 2}, _parent(), 'was resized'),
    ({'depth': 6}, _parent(), 'max_chain_length (7)'),
    ({}, None, 'gone from Glance'),
    ({}, _parent(status='deleted'), 'is deleted, not active'),
    ({}, _parent(vmsnap_checkpoint='other'), 'does not record checkpoint'),
])
def test_a_new_chain_says_why(tmp_path, record, parent, words):
    link = _plan(tmp_path, record=record, parent=parent)
    assert link.checkpoint == 'vmsnap-new' and not link.delta
    assert link.depth == 0 and link.chain_id != 'c'
    assert words in link.reason, link.reason


def test_a_checkpoint_that_fails_validation_starts_a_new_chain(tmp_path):
    guest = mock.Mock(uuid='u-1')
    guest.redefine_checkpoint.side_effect = exception.HypervisorError(
        action='validate', instance_uuid='u-1', reason='broken bitmap')
    link = _plan(tmp_path, record={}, parent=_parent(), guest=guest)
    assert 'missing or not valid (broken bitmap)' in link.reason
    guest.delete_checkpoint.assert_called_with('vmsnap-p')


def test_a_memory_snapshot_starts_a_new_chain(tmp_path):
    link = _plan(tmp_path, record={}, parent=_parent(), memory=True)
    assert not link.delta and 'memory snapshot' in link.reason


def test_a_sound_chain_gives_a_delta(tmp_path):
    guest = mock.Mock(uuid='u-1')
    link = _plan(tmp_path, record={'depth': 2}, parent=_parent(),
                 guest=guest)
    guest.redefine_checkpoint.assert_called_once_with('<x/>')
    assert link.delta and link.incremental_from == 'vmsnap-p'
    assert link.properties() == {
        'vmsnap_delta': 'true', 'vmsnap_chain_id': 'c',
        'vmsnap_chain_depth': '3', 'vmsnap_checkpoint': 'vmsnap-new',
        'vmsnap_parent_image_id': 'p'}


def test_lineage_names_the_missing_link():
    images = mock.Mock()
    images.get.side_effect = exception.ImageNotFound(image_id=PARENT)
    delta = {'id': 'd', 'vmsnap_delta': 'true', 'disk_format': 'qcow2',
             'vmsnap_parent_image_id': PARENT, 'vmsnap_chain_depth': '1',
             'vmsnap_chain_id': 'c'}
    with pytest.raises(exception.ChainBroken) as raised:
        chains.lineage(images, delta)
    assert '%s, the parent of d (depth 1 of chain c), is gone' % PARENT in (
        str(raised.value))
    # A parent id that is not an image id never reaches Glance.
    images.reset_mock()
    delta['vmsnap_parent_image_id'] = '../../v2/images'
    with pytest.raises(exception.ChainBroken, match='not an image id'):
        chains.lineage(images, delta)
    images.get.assert_not_called()
