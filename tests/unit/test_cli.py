import argparse
import json
from unittest import mock

import pytest

from vmsnap_driver.cmd import image_commands
from vmsnap_driver.cmd import server_commands
from vmsnap_driver.cmd import vmsnap
from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import verify


@pytest.fixture
def conf_file(tmp_path):
    path = tmp_path / 'vmsnap.conf'
    path.write_text('[libvirt]\nsnapshots_directory = %s\n' % tmp_path)
    yield str(path)
    config.CONF.clear()
    config.CONF.set_default('use_stderr', False)     # oslo.log's own


@pytest.fixture
def images():
    with mock.patch.object(image_commands.common, 'images') as factory:
        factory.return_value.find.return_value = {'id': 'image-1'}
        yield factory.return_value


def _verdict(ok):
    return verify.Verdict('image-1', [
        verify.Check('content sha256', ok, 'detail')])


def test_a_property_is_key_value_and_not_reserved():
    assert server_commands._property('purpose=a=b') == ('purpose', 'a=b')
    for text in ('purpose', '=x', 'os_hash_value=0', 'vmsnap_chain_id=1',
                 'visibility=public'):
        with pytest.raises(argparse.ArgumentTypeError):
            server_commands._property(text)


def test_global_options_may_follow_the_command(conf_file, images,
                                               capsys, tmp_path):
    with mock.patch.object(image_commands.verify, 'verify',
                           return_value=_verdict(True)) as verified:
        assert vmsnap.main(['verify', 'my-image', '--config-file',
                            conf_file, '-f', 'json']) == 0
    images.find.assert_called_once_with('my-image')
    assert verified.call_args[1]['workdir'] == str(tmp_path)
    rows = json.loads(capsys.readouterr().out)
    assert rows[-1] == {'result': 'ok', 'check': 'verdict',
                        'detail': 'image image-1: VERIFIED'}


def test_verify_exits_1_on_a_mismatch_and_2_when_it_cannot_check(
        conf_file, images, capsys):
    with mock.patch.object(image_commands.verify, 'verify',
                           return_value=_verdict(False)):
        assert vmsnap.main(['--config-file', conf_file, 'verify',
                            'my-image']) == 1
    assert 'MISMATCH' in capsys.readouterr().out
    images.find.side_effect = exception.ImageNotFound(image_id='my-image')
    assert vmsnap.main(['--config-file', conf_file, 'verify',
                        'my-image']) == 2
    assert capsys.readouterr().err.startswith(
        'ERROR: Image my-image does not exist in Glance')


def test_a_failed_command_prints_one_error_line(conf_file, capsys):
    with mock.patch.object(server_commands.host_mod, 'Host') as host:
        host.return_value.lookup.side_effect = exception.InstanceNotFound(
            instance_uuid='nowhere', uri='qemu:///system')
        assert vmsnap.main(['--config-file', conf_file, 'chain',
                            'nowhere']) == 1
    err = capsys.readouterr().err
    assert err.startswith('ERROR: ') and len(err.splitlines()) == 1, err
