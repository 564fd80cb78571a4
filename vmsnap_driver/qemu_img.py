"""qemu-img, one function per verb, run through oslo.concurrency.

The source format is always passed with ``-f``: letting qemu-img probe a
guest-written image is how a raw disk that looks like a qcow2 header
escapes into the host's files.  ``info`` runs under resource limits because
it parses untrusted image headers (the same limits Nova uses).
"""

import dataclasses
import functools
import json
import re
from typing import List, Optional, Tuple

from oslo_concurrency import processutils
from oslo_log import log as logging

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

QEMU_IMG_LIMITS = processutils.ProcessLimits(
    cpu_time=30,
    address_space=1024 * 1024 * 1024)

# Copies of images read back from Glance: bounded memory, but no CPU limit,
# since a large disk takes a while.
UNTRUSTED_LIMITS = processutils.ProcessLimits(
    address_space=2 * 1024 * 1024 * 1024)

FORMATS = ('qcow2', 'raw')
# When it compresses, qemu-img convert keeps this many requests in flight
# (-m), each compressed on QEMU's thread pool: more would take more of the
# host's cores from its guests.
COMPRESS_REQUESTS = '4'
# The first qemu-img that writes compressed clusters out of order (-W);
# before it, compressed writes go in order, on one core.
MIN_OUT_OF_ORDER_COMPRESS = (5, 0)


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One layer of a disk's backing chain, as qemu-img reports it."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing_file: Optional[str]
    backing_format: Optional[str]


def _execute(*cmd: str, prlimit=None) -> str:
    try:
        out, _err = processutils.execute(*cmd, prlimit=prlimit)
    except processutils.ProcessExecutionError as e:
        raise exception.QemuImgFailed(
            command=' '.join(cmd), exit_code=e.exit_code,
            stderr=(e.stderr or '').strip() or str(e))
    except OSError as e:
        raise exception.QemuImgFailed(
            command=' '.join(cmd), exit_code='-',
            stderr='%s (is qemu-utils installed?)' % e)
    return out


@functools.lru_cache(maxsize=None)
def version() -> Tuple[int, ...]:
    """qemu-img's version, asked once."""
    match = re.search(r'version (\d+)\.(\d+)',
                      _execute('qemu-img', '--version'))
    return tuple(int(n) for n in match.groups()) if match else (0, 0)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise exception.QemuImgFailed(
            command='qemu-img', exit_code='-',
            stderr='unsupported image format %r (expected one of %s)'
                   % (fmt, ', '.join(FORMATS)))


def info(path: str, fmt: str, force_share: bool = False) -> List[ImageInfo]:
    """The image and every backing file under it, top first.

    :param force_share: read an image a running QEMU holds open (``-U``).
    """
    _check_format(fmt)
    cmd = ['qemu-img', 'info', '--output=json', '--backing-chain',
           '-f', fmt]
    if force_share:
        cmd.append('-U')
    cmd.append(path)
    out = _execute(*cmd, prlimit=QEMU_IMG_LIMITS)
    try:
        layers = json.loads(out)
    except ValueError as e:
        raise exception.QemuImgFailed(command=' '.join(cmd), exit_code=0,
                                      stderr='unreadable output: %s' % e)
    return [ImageInfo(path=layer['filename'],
                      format=layer['format'],
                      virtual_size=layer['virtual-size'],
                      actual_size=layer.get('actual-size', 0),
                      backing_file=layer.get('full-backing-filename'),
                      backing_format=layer.get('backing-filename-format'))
            for layer in layers]


def create_overlay(path: str, virtual_size: int,
                   backing_file: Optional[str] = None,
                   backing_format: Optional[str] = None) -> None:
    """An empty qcow2, optionally over a backing file (never probed)."""
    cmd = ['qemu-img', 'create', '-q', '-f', 'qcow2']
    if backing_file:
        _check_format(backing_format)
        cmd += ['-b', backing_file, '-F', backing_format]
    cmd += [path, str(virtual_size)]
    _execute(*cmd)


def convert(source: str, source_format: str, dest: str, dest_format: str,
            compress: str = '', untrusted: bool = False) -> None:
    """Copy an image and its whole backing chain into one flat file.

    Glance refuses a qcow2 that still names a backing file, so the result
    never has one.

    :param compress: a qcow2 compression type (zlib, zstd), or '' for
        none.
    :param untrusted: the source came from Glance (inspected by
        image_safety first): run under UNTRUSTED_LIMITS.
    """
    _check_format(source_format)
    _convert(['-f', source_format, source], dest, dest_format, compress,
             prlimit=UNTRUSTED_LIMITS if untrusted else None)


def rebase(path: str, backing_file: str, backing_format: str) -> None:
    """Put ``path`` on a new backing file, keeping its content.

    The safe mode: wherever the old and the new backing differ, the old
    content is written into ``path``, so that it holds only what differs
    from the new one.  Runs under UNTRUSTED_LIMITS: the old backing came
    from Glance.
    """
    _check_format(backing_format)
    _execute('qemu-img', 'rebase', '-q', '-f', 'qcow2', '-b', backing_file,
             '-F', backing_format, path, prlimit=UNTRUSTED_LIMITS)


def set_backing(path: str, backing_file: str, backing_format: str) -> None:
    """Name ``path``'s backing file, writing nothing else (``rebase -u``).

    For a delta put back on its parent: the delta holds exactly what
    differs from it.  Only on files vmsnap inspected first.
    """
    _check_format(backing_format)
    _execute('qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-b',
             backing_file, '-F', backing_format, path,
             prlimit=QEMU_IMG_LIMITS)


def commit(path: str) -> None:
    """Write ``path``'s clusters into its backing file (``commit -d``).

    The top file is left as it is (it is deleted next).  Runs under
    UNTRUSTED_LIMITS: the files came from Glance.
    """
    _execute('qemu-img', 'commit', '-q', '-d', '-f', 'qcow2', path,
             prlimit=UNTRUSTED_LIMITS)


def convert_nbd(socket_path: str, export: str, dest: str, dest_format: str,
                compress: str = '') -> None:
    """Copy an NBD export (raw disk content) into a flat image file.

    The source is named with ``--image-opts``: the NBD driver is explicit,
    so nothing is probed.
    """
    opts = 'driver=nbd,server.type=unix,server.path=%s,export=%s' % (
        socket_path.replace(',', ',,'), export.replace(',', ',,'))
    _convert(['--image-opts', opts], dest, dest_format, compress)


def _convert(source_args: List[str], dest: str, dest_format: str,
             compress: str, prlimit=None) -> None:
    _check_format(dest_format)
    cmd = ['qemu-img', 'convert'] + source_args[:-1] + ['-O', dest_format]
    if compress and dest_format == 'qcow2':
        cmd.append('-c')
        if compress != 'zlib':
            # zlib is the only type before QEMU 5.1: name no other there.
            cmd += ['-o', 'compression_type=' + compress]
        if version() >= MIN_OUT_OF_ORDER_COMPRESS:
            # Compressed clusters are appended wherever they land: with
            # several requests in flight they are compressed side by side.
            cmd += ['-m', COMPRESS_REQUESTS, '-W']
    cmd += [source_args[-1], dest]
    LOG.debug('Flattening %(src)s into %(dest)s',
              {'src': source_args[-1], 'dest': dest})
    _execute(*cmd, prlimit=prlimit)
