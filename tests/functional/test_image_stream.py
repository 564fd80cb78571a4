"""The streaming encoders against qemu-img's own reading of their output.

A disk with data spread over several L2 tables (each maps 512 MiB) is
served by a real qemu-nbd; the encoded image must pass ``qemu-img check``
and compare identical to the source.
"""

import os
import subprocess
import tempfile
import time

import pytest

from vmsnap_driver import image_stream
from vmsnap_driver import nbd

MIB = 1024 * 1024


@pytest.fixture(scope='module')
def export(workroot):
    directory = tempfile.mkdtemp(dir=workroot, prefix='nbd-')
    disk = os.path.join(directory, 'disk.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk,
                    str(1600 * MIB + 12345)], check=True)
    writes = ['write -P 0x11 0 64k', 'write -P 0x22 100M 3M',
              'write -z 200M 1M', 'write -P 0x33 511M 2M',
              'write -P 0x44 1100M 128k', 'write -P 0x55 1600M 12345']
    subprocess.run(['qemu-io', '-f', 'qcow2'] +
                   [arg for w in writes for arg in ('-c', w)] + [disk],
                   check=True, capture_output=True)
    sock = os.path.join(directory, 'nbd.sock')
    server = subprocess.Popen(['qemu-nbd', '--persistent', '--read-only',
                               '-f', 'qcow2', '-x', 'vda', '-k', sock, disk])
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield disk, sock
    server.terminate()
    server.wait()


@pytest.mark.parametrize('fmt', ['qcow2', 'raw'])
def test_encoded_image_matches_source(fmt, export, workroot):
    disk, sock = export
    out = os.path.join(workroot, 'encoded.' + fmt)
    with nbd.Client(sock, 'vda') as client:
        extents = client.extents()
        assert sum(e.length for e in extents) == client.size
        encoded = image_stream.ENCODERS[fmt](client.size, extents,
                                             client.read_ahead)
        body = image_stream.Prefetcher(encoded.chunks, encoded.size)
        written = 0
        with open(out, 'wb') as f:
            while True:
                chunk = body.read(65536)
                if not chunk:
                    break
                written += f.write(chunk)
        body.close()
    assert written == encoded.size
    check = subprocess.run(['qemu-img', 'check', '-f', fmt, out],
                           capture_output=True, text=True)
    if fmt == 'qcow2':
        assert check.returncode == 0, check.stdout + check.stderr
        # Only the data clusters and a little metadata are written.
        assert encoded.size < 8 * MIB
    compare = subprocess.run(['qemu-img', 'compare', '-f', fmt, '-F',
                              'qcow2', out, disk], capture_output=True,
                             text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    os.unlink(out)
