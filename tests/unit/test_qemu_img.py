from unittest import mock

from oslo_concurrency import processutils
import pytest

from vmsnap_driver import exception
from vmsnap_driver import qemu_img

INFO = ('[{"filename": "/top.qcow2", "format": "qcow2", '
        '"virtual-size": 1024, "actual-size": 10, '
        '"full-backing-filename": "/base.qcow2", '
        '"backing-filename-format": "qcow2"}, '
        '{"filename": "/base.qcow2", "format": "qcow2", '
        '"virtual-size": 1024, "actual-size": 20}]')


@mock.patch.object(processutils, 'execute', return_value=(INFO, ''))
def test_info_passes_format_and_limits(execute):
    chain = qemu_img.info('/top.qcow2', 'qcow2', force_share=True)
    args, kwargs = execute.call_args
    assert args == ('qemu-img', 'info', '--output=json', '--backing-chain',
                    '-f', 'qcow2', '-U', '/top.qcow2')
    assert kwargs['prlimit'] is qemu_img.QEMU_IMG_LIMITS
    assert [layer.path for layer in chain] == ['/top.qcow2', '/base.qcow2']
    assert chain[0].backing_file == '/base.qcow2'
    assert chain[1].backing_file is None


@mock.patch.object(qemu_img, 'version', return_value=(7, 2))
@mock.patch.object(processutils, 'execute', return_value=('', ''))
def test_convert_flattens_with_explicit_formats(execute, _version):
    qemu_img.convert('/src', 'raw', '/dst', 'qcow2', compress='zstd')
    assert execute.call_args[0] == ('qemu-img', 'convert', '-f', 'raw',
                                    '-O', 'qcow2', '-c', '-o',
                                    'compression_type=zstd', '-m', '4', '-W',
                                    '/src', '/dst')


@mock.patch.object(qemu_img, 'version', return_value=(4, 2))
@mock.patch.object(processutils, 'execute', return_value=('', ''))
def test_an_older_qemu_img_compresses_zlib_in_order(execute, _version):
    qemu_img.convert('/src', 'raw', '/dst', 'qcow2', compress='zlib')
    assert execute.call_args[0] == ('qemu-img', 'convert', '-f', 'raw',
                                    '-O', 'qcow2', '-c', '/src', '/dst')


@mock.patch.object(processutils, 'execute', return_value=('', ''))
def test_compression_is_only_for_qcow2(execute):
    qemu_img.convert('/src', 'qcow2', '/dst', 'raw', compress='zlib')
    assert '-c' not in execute.call_args[0]


@mock.patch.object(processutils, 'execute', return_value=('', ''))
def test_overlay_names_backing_format(execute):
    qemu_img.create_overlay('/copy', 1024, '/base', 'raw')
    assert execute.call_args[0] == ('qemu-img', 'create', '-q', '-f',
                                    'qcow2', '-b', '/base', '-F', 'raw',
                                    '/copy', '1024')


def test_errors_name_command_and_stderr():
    error = processutils.ProcessExecutionError(
        stderr='Could not open backing file', exit_code=1)
    with mock.patch.object(processutils, 'execute', side_effect=error):
        with pytest.raises(exception.QemuImgFailed) as err:
            qemu_img.convert('/src', 'qcow2', '/dst', 'qcow2')
    assert 'qemu-img convert -f qcow2 -O qcow2 /src /dst' in str(err.value)
    assert 'Could not open backing file' in str(err.value)


def test_unknown_formats_are_never_passed_on():
    with pytest.raises(exception.QemuImgFailed):
        qemu_img.info('/x', 'vmdk')
