"""The memory image's seal: only this deployment's states are restored."""

import os

from vmsnap_driver import memory_image


def _sealed(key, sha256='ab' * 32):
    image = {'id': 'mem-1', memory_image.SHA256_PROPERTY: sha256,
             'vmsnap_memory_mib': '192'}
    image[memory_image.SEAL_PROPERTY] = memory_image.seal(
        key, image, 'disk-1', 'u-1')
    return image


def test_the_key_is_made_once_and_kept_private(tmp_path):
    path = str(tmp_path / 'seal.key')
    key = memory_image.seal_key(path)
    assert memory_image.seal_key(path) == key
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_sealed_state_passes(tmp_path):
    key = memory_image.seal_key(str(tmp_path / 'k'))
    assert memory_image.unsealed(key, _sealed(key), 'disk-1', 'u-1') is None


def test_any_edit_or_other_key_breaks_the_seal(tmp_path):
    key = memory_image.seal_key(str(tmp_path / 'k'))
    other = memory_image.seal_key(str(tmp_path / 'other'))
    image = _sealed(key)
    assert memory_image.unsealed(key, image, 'disk-2', 'u-1')
    assert memory_image.unsealed(key, image, 'disk-1', 'u-2')
    assert memory_image.unsealed(other, image, 'disk-1', 'u-1')
    image['vmsnap_memory_mib'] = '4096'
    assert memory_image.unsealed(key, image, 'disk-1', 'u-1')
    image['vmsnap_memory_mib'] = '192'
    image[memory_image.SHA256_PROPERTY] = 'cd' * 32
    assert 'not sealed' in memory_image.unsealed(key, image, 'disk-1',
                                                 'u-1')
    del image[memory_image.SEAL_PROPERTY]
    assert memory_image.unsealed(key, image, 'disk-1', 'u-1')


def test_a_state_that_does_not_fit_the_domain_says_why():
    image = {'id': 'mem-1', 'vmsnap_machine_type': 'pc-q35-7.2',
             'vmsnap_cpu_mode': 'custom', 'vmsnap_cpu_model': 'qemu64',
             'vmsnap_memory_mib': '4096'}
    machine = {'machine_type': 'pc-q35-7.2', 'cpu_mode': 'custom',
               'cpu_model': 'qemu64', 'memory_mib': '192'}
    assert memory_image.misfit(image, machine) == (
        'the memory state was saved with 4096 MiB of RAM, the domain now '
        'has 192 MiB of RAM')
    image['vmsnap_memory_mib'] = '192'
    assert memory_image.misfit(image, machine) is None
