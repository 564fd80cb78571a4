import os
import subprocess
import sys

from stevedore import driver as stevedore_driver

from vmsnap_driver import config
from vmsnap_driver import driver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, 'etc', 'vmsnap', 'vmsnap.conf.sample')


def _blocks(text):
    return [block.strip() for block in text.split('\n\n') if block.strip()]


def test_sample_config_is_current(tmp_path):
    """Every option block of ours is in the sample: else run tox -e genconfig.

    Only the vmsnap namespace is compared so that a new oslo.log release
    does not make the committed sample "stale".
    """
    out = tmp_path / 'ours.conf'
    subprocess.run([sys.executable, '-m', 'oslo_config.generator',
                    '--namespace', 'vmsnap', '--wrap-width', '79',
                    '--output-file', str(out)], check=True)
    sample = _blocks(open(SAMPLE).read())
    missing = [block for block in _blocks(out.read_text())
               if block not in sample]
    assert not missing, ('etc/vmsnap/vmsnap.conf.sample is stale: run '
                         '"tox -e genconfig". Missing:\n%s'
                         % '\n\n'.join(missing))


def test_parse_args_reads_config_file(tmp_path):
    conf_file = tmp_path / 'vmsnap.conf'
    conf_file.write_text('[libvirt]\nsnapshot_mode = cold\n'
                         '[glance]\nauth_type = none\n'
                         'endpoint_override = http://127.0.0.1:9292\n')
    try:
        config.parse_args(['--config-file', str(conf_file)])
        assert config.CONF.libvirt.snapshot_mode == 'cold'
        assert config.CONF.glance.endpoint_override == (
            'http://127.0.0.1:9292')
        assert config.CONF.glance.service_type == 'image'
        assert config.CONF.compute_driver == 'libvirt'
        assert config.CONF.oslo_concurrency.lock_path == (
            '/var/lib/vmsnap/lock')
    finally:
        config.CONF.reset()
        config.CONF.clear()


def test_entry_point_loads_driver_without_arguments():
    loaded = stevedore_driver.DriverManager(
        'vmsnap.compute_drivers', 'libvirt', invoke_on_load=True).driver
    assert isinstance(loaded, driver.LibvirtDriver)
