import collections
import os
from unittest import mock

import pytest

from vmsnap_driver import exception
from vmsnap_driver import workspace

Usage = collections.namedtuple('Usage', 'total used free')


def test_workspace_is_private_and_removed(tmp_path):
    with workspace.workspace(str(tmp_path / 'snaps'), 1) as path:
        assert oct(os.stat(path).st_mode & 0o777) == '0o711'
        open(os.path.join(path, 'f'), 'w').close()
    assert os.listdir(tmp_path / 'snaps') == []


def test_workspace_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with workspace.workspace(str(tmp_path), 1):
            raise RuntimeError()
    assert os.listdir(tmp_path) == []


def test_not_enough_space_fails_before_creating_anything(tmp_path):
    free = 100 * workspace.MIB
    with mock.patch('shutil.disk_usage', return_value=Usage(0, 0, free)):
        with pytest.raises(exception.InsufficientSpace) as err:
            with workspace.workspace(str(tmp_path), free):
                pass
    assert '100 MiB are free' in str(err.value)
    assert os.listdir(tmp_path) == []


def test_workspaces_side_by_side_count_each_others_room(tmp_path):
    free = 1000 * workspace.MIB
    each = 500 * workspace.MIB
    with mock.patch('shutil.disk_usage', return_value=Usage(0, 0, free)):
        with workspace.workspace(str(tmp_path), each):
            with pytest.raises(exception.InsufficientSpace) as err:
                with workspace.workspace(str(tmp_path), each):
                    pass
            assert '%d MiB are free' % (
                (free - each - workspace.MARGIN) // workspace.MIB) in str(
                    err.value)
            with pytest.raises(exception.InsufficientSpace):
                workspace.check_space(str(tmp_path), each)
        # Released with the first one: the same request fits again.
        with workspace.workspace(str(tmp_path), each):
            pass


def test_what_a_workspace_wrote_is_not_counted_twice(tmp_path):
    free = 1000 * workspace.MIB
    each = 500 * workspace.MIB
    with mock.patch('shutil.disk_usage', return_value=Usage(0, 0, free)):
        with workspace.workspace(str(tmp_path), each) as first:
            with open(os.path.join(first, 'copy'), 'wb') as f:
                os.posix_fallocate(f.fileno(), 0, each + workspace.MARGIN)
            # Its copy is written: it holds nothing more than the disk
            # usage already shows, so a second one fits.
            with workspace.workspace(str(tmp_path), each):
                pass
