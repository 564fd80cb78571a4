"""Serve a local image file read-only over NBD with qemu-nbd.

The NBD client reads any format qemu understands, including compressed
qcow2, as raw disk content: that is how a flattened file or a downloaded
image is hashed.  The format is always given (``-f``), never probed.
"""

import contextlib
import os
import resource
import subprocess
import tempfile
import time
from typing import Iterator, Optional, Tuple

from vmsnap_driver import exception
from vmsnap_driver import qemu_img

EXPORT = 'disk'
START_TIMEOUT = 30


def _limit_memory() -> None:
    """In the child: qemu-img's limits for untrusted images, for qemu-nbd."""
    limit = qemu_img.UNTRUSTED_LIMITS.address_space
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@contextlib.contextmanager
def serve(path: str, fmt: str, untrusted: bool = False,
          extent: Optional[Tuple[int, int]] = None) -> Iterator[str]:
    """Export ``path`` on a private unix socket; yield the socket path.

    :param untrusted: the image came from Glance: qemu-nbd runs under the
        same memory limit as qemu-img on such images.
    :param extent: (offset, length) of the image inside ``path`` (a member
        of an archive), read in place.
    """
    if fmt not in qemu_img.FORMATS:
        raise exception.QemuImgFailed(command='qemu-nbd', exit_code='-',
                                      stderr='unsupported format %r' % fmt)
    directory = tempfile.mkdtemp(prefix='vmsnap-nbd-')
    sock = os.path.join(directory, 'nbd.sock')
    cmd = ['qemu-nbd', '--read-only', '--persistent', '--shared=4',
           '-x', EXPORT, '-k', sock]
    if extent:
        # QEMU's option syntax doubles a comma inside a value.
        cmd += ['--image-opts', 'driver=%s,file.driver=raw,file.offset=%d,'
                'file.size=%d,file.file.driver=file,file.file.filename=%s'
                % (fmt, extent[0], extent[1], path.replace(',', ',,'))]
    else:
        cmd += ['-f', fmt, path]
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_limit_memory if untrusted else None)
    except OSError as e:
        os.rmdir(directory)
        raise exception.QemuImgFailed(command=' '.join(cmd), exit_code='-',
                                      stderr='%s (is qemu-utils installed?)'
                                      % e)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise exception.QemuImgFailed(
                    command=' '.join(cmd), exit_code=proc.wait(),
                    stderr=proc.stderr.read().decode(errors='replace'))
            time.sleep(0.02)
        yield sock
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()
        if os.path.exists(sock):
            os.unlink(sock)
        os.rmdir(directory)
