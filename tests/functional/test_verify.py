"""``vmsnap verify`` against real images in the real Glance."""

import json
import os
import subprocess
import sys

from tests.functional import checks
from vmsnap_driver import digest

BIN = os.path.dirname(sys.executable)
GLANCE_STORE = os.environ.get('VMSNAP_GLANCE_DIR',
                              '/var/lib/vmsnap-glance') + '/images'


def run_verify(conf_file, image_id, *args):
    return subprocess.run([os.path.join(BIN, 'vmsnap'), '--config-file',
                           conf_file, 'verify', image_id, *args],
                          capture_output=True, text=True, timeout=300)


def test_verify_passes_then_catches_altered_bytes(
        conf, load_driver, make_guest, queued_image, glance, glance_url,
        tmp_path):
    guest = make_guest()
    guest.start()
    image_id = queued_image()
    load_driver().snapshot(None, checks.Instance(guest), image_id)
    conf_file = tmp_path / 'vmsnap.conf'
    conf_file.write_text('[glance]\nauth_type = none\n'
                         'endpoint_override = %s\n' % glance_url)

    good = run_verify(str(conf_file), image_id)
    assert good.returncode == 0, good.stdout + good.stderr
    assert 'VERIFIED' in good.stdout
    assert 'content sha256' in good.stdout

    # Flip one byte of guest data in the file Glance stores.
    stored = os.path.join(GLANCE_STORE, image_id)
    with open(stored, 'r+b') as f:
        f.seek(os.path.getsize(stored) - 4096)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = run_verify(str(conf_file), image_id, '-f', 'json')
    assert bad.returncode == 1, bad.stdout + bad.stderr
    rows = {row['check']: row for row in json.loads(bad.stdout)}
    assert rows['verdict']['detail'].endswith('MISMATCH')
    assert rows['content sha256']['result'] == 'FAIL'
    assert any('stored image was altered' in row['detail']
               for row in rows.values() if row['result'] == 'FAIL'), rows


def test_verify_of_unknown_image_is_an_error(glance_url, tmp_path):
    conf_file = tmp_path / 'vmsnap.conf'
    conf_file.write_text('[glance]\nauth_type = none\n'
                         'endpoint_override = %s\n' % glance_url)
    result = run_verify(str(conf_file),
                        '0b7c1d4e-0000-4000-8000-000000000000')
    assert result.returncode == 2
    assert 'does not exist' in result.stderr


def test_verify_refuses_an_image_that_names_a_host_file(
        glance, glance_url, tmp_path):
    # Glance inspects only bare containers: an "ovf" one gets past it.
    hostile = tmp_path / 'hostile.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                    '/etc/hostname', '-F', 'raw', str(hostile), '1M'],
                   check=True)
    image = glance.images.create(name='hostile', disk_format='qcow2',
                                 container_format='ovf',
                                 vmsnap_content_sha256='0' * 64)
    try:
        with open(hostile, 'rb') as data:
            glance.images.upload(image['id'], data)
        conf_file = tmp_path / 'vmsnap.conf'
        conf_file.write_text('[glance]\nauth_type = none\n'
                             'endpoint_override = %s\n' % glance_url)
        result = run_verify(str(conf_file), image['id'], '-f', 'json')
        assert result.returncode == 1, result.stdout + result.stderr
        rows = {row['check']: row for row in json.loads(result.stdout)}
        assert rows['safety']['result'] == 'FAIL'
        assert 'backing_file' in rows['safety']['detail']
        assert 'qemu-img check' not in rows
    finally:
        glance.images.delete(image['id'])


def test_a_mostly_empty_disk_is_proven_by_its_tree_digest(
        conf, load_driver, make_guest, queued_image, glance, glance_url,
        tmp_path):
    """Its zeros are not hashed byte by byte, and still proven."""
    guest = make_guest()
    # A 64 MiB filesystem on a disk grown to 2 GiB: 1.9 GiB of zeros.
    subprocess.run(['qemu-img', 'resize', '-q', '-f', 'qcow2',
                    guest.disk['path'], '2G'], check=True)
    guest.start()
    image_id = queued_image()
    # As Nova's API leaves it when the server's base image was itself a
    # vmsnap snapshot: that one's record, which is not this one's.
    glance.images.update(image_id, vmsnap_content_sha256='0' * 64,
                         vmsnap_chain_id='base-chain')
    load_driver().snapshot(None, checks.Instance(guest), image_id)
    image = glance.images.get(image_id)
    assert 'vmsnap_content_sha256' not in image
    assert 'vmsnap_chain_id' not in image
    stored = os.path.join(GLANCE_STORE, image_id)
    assert digest.of_file(stored, 'qcow2', untrusted=True, tree=True) == (
        image['vmsnap_content_tree_sha256'])
    compare = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'qcow2',
                              '-F', 'qcow2', stored, guest.disk['path']],
                             capture_output=True, text=True)
    # The guest may have written since: its filesystem, not the disk size.
    assert 'Image sizes are different' not in compare.stdout, compare.stdout

    conf_file = tmp_path / 'vmsnap.conf'
    conf_file.write_text('[glance]\nauth_type = none\n'
                         'endpoint_override = %s\n' % glance_url)
    good = run_verify(str(conf_file), image_id, '-f', 'json')
    assert good.returncode == 0, good.stdout + good.stderr
    rows = {row['check']: row for row in json.loads(good.stdout)}
    assert rows['content tree']['result'] == 'ok', rows
