"""The ``vmsnap`` command line as an operator types it.

Servers and images by name, records as ``-f json``/``value``, a short
help, errors that fit the command; against this host's libvirtd and the
local Glance.
"""

import json
import os
import subprocess
import sys
import uuid

from tests.functional import service as service_mod

BIN = os.path.dirname(sys.executable)
COMMANDS = ('snapshot', 'revert', 'chain', 'flatten', 'verify', 'export',
            'import', 'recover')


def _vmsnap(*args, config=None):
    options = ['--config-file', config] if config else []
    return subprocess.run([os.path.join(BIN, 'vmsnap')] + options
                          + list(args), capture_output=True, text=True,
                          timeout=300)


def test_help_is_short_and_names_every_command():
    shown = _vmsnap('--help')
    assert shown.returncode == 0, shown.stderr
    for command in COMMANDS:
        assert '\n  %s ' % command in shown.stdout, command
    # oslo.log's two dozen options stay in the configuration file.
    assert '--log-config-append' not in shown.stdout
    assert len(shown.stdout.splitlines()) < 40, shown.stdout
    verify = _vmsnap('verify', '--help')
    assert verify.returncode == 0, verify.stderr
    assert '-f {csv,json,table,value,yaml}' in verify.stdout
    assert '--log-date-format' not in verify.stdout


def test_snapshot_then_verify_by_name(workroot, glance_url, running_guest,
                                      glance):
    config = service_mod.Service(workroot, glance_url).config
    refused = _vmsnap('snapshot', running_guest.name, '--property',
                      'os_hash_value=0', config=config)
    assert refused.returncode == 2
    assert 'os_hash_value is set by Glance or vmsnap' in refused.stderr

    name = 'cli-' + uuid.uuid4().hex[:8]
    made = _vmsnap('snapshot', running_guest.name, '--name', name,
                   '--property', 'purpose=cli', '--no-progress', '-f',
                   'json', config=config)
    assert made.returncode == 0, made.stderr
    image = json.loads(made.stdout)
    try:
        assert (image['name'], image['status']) == (name, 'active')
        stored = glance.images.get(image['id'])
        assert stored['purpose'] == 'cli'
        assert stored['instance_uuid'] == running_guest.uuid
        assert stored['visibility'] == 'private'

        verified = _vmsnap('verify', name, '--no-progress', '-f', 'value',
                           '-c', 'result', '-c', 'check', config=config)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert 'ok verdict' in verified.stdout.splitlines()
    finally:
        glance.images.delete(image['id'])

    missing = _vmsnap('verify', name, '--no-progress', config=config)
    assert missing.returncode == 2
    assert missing.stderr.startswith('ERROR: Image %s does not exist' % name)
    assert 'queued' not in missing.stderr
