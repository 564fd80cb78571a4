"""Checks shared by the functional tests: images, guests, leftovers."""

import datetime
import json
import os
import subprocess

import libvirt

from tests.functional import testguest
from vmsnap_driver import digest
from vmsnap_driver import nbd
from vmsnap_driver import qemu_nbd

# What e2fsck fixes on any ext4 that was mounted when copied: the summary
# counters ext4 only writes back at unmount.  Anything else is damage.
RECOVERY_ONLY = ('Free blocks count wrong', 'Free inodes count wrong')


class Instance:
    """What the compute manager passes: an object with uuid and name."""

    def __init__(self, guest, image_ref=None, system_metadata=None):
        self.uuid = guest.uuid
        self.name = guest.name
        self.image_ref = image_ref
        self.system_metadata = system_metadata or {}


class TaskStates:
    """update_task_state that checks expected_state as Nova's manager does."""

    def __init__(self):
        self.state = None
        self.calls = []

    def __call__(self, task_state, expected_state=None):
        assert expected_state is None or expected_state == self.state, (
            'task state is %s, driver expected %s' % (self.state,
                                                      expected_state))
        self.state = task_state
        self.calls.append((task_state, expected_state))


def guest_snapshot(driver, guest, image_id, **instance_kwargs):
    """Snapshot and return the counter window and task-state calls."""
    tasks = TaskStates()
    before = guest.last_counter()
    driver.snapshot(None, Instance(guest, **instance_kwargs), image_id,
                    tasks)
    after = guest.last_counter()
    assert tasks.calls == [('image_pending_upload', None),
                           ('image_uploading', 'image_pending_upload')]
    return before, after


def download(glance, image_id, dest):
    with open(dest, 'wb') as f:
        for chunk in glance.images.data(image_id):
            f.write(chunk)
    return dest


def assert_image_holds(glance, image_id, guest, workdir, window,
                       image_format='qcow2', consistency='crash-consistent'):
    image = glance.images.get(image_id)
    assert image['status'] == 'active'
    assert image['disk_format'] == image_format
    assert image['container_format'] == 'bare'
    assert image['image_type'] == 'snapshot'
    assert image['instance_uuid'] == guest.uuid
    assert image['vmsnap_source_disk'] == 'vda'
    assert image['vmsnap_source_path'] == guest.disk['path']
    start = datetime.datetime.fromisoformat(image['vmsnap_capture_start'])
    end = datetime.datetime.fromisoformat(image['vmsnap_capture_end'])
    assert start <= end

    local = download(glance, image_id, os.path.join(workdir, 'image'))
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '--output=json', '-f', image_format, local],
        check=True, capture_output=True, text=True).stdout)
    assert 'backing-filename' not in info, 'image is not flattened'
    assert info['virtual-size'] == 64 * 1024 * 1024

    # The recorded content digest is the digest of what was uploaded,
    # whatever the path that produced it.
    with qemu_nbd.serve(local, image_format) as sock:
        with nbd.Client(sock, qemu_nbd.EXPORT) as client:
            assert digest.of_export(client).sha256 == image[
                'vmsnap_content_sha256']
    assert image['vmsnap_consistency'] == consistency
    assert image['vmsnap_disks'] == 'vda'

    result = testguest.read_ext4_files(
        local, image_format, ['boot.bin', 'base.bin', 'counter'], workdir)
    os.unlink(local)
    assert result['check'].returncode == 0, result['check'].stdout
    if consistency == 'filesystem-frozen':
        # Frozen, ext4 flushed its journal: nothing to recover, nothing to
        # fix.
        assert result['repair'].returncode == 0, result['repair'].stdout
        assert 'recovering journal' not in result['repair'].stdout
    # e2fsck prints each problem on the line before its "Fix? yes".
    lines = [line for line in result['repair'].stdout.splitlines() if line]
    fixed = [lines[i - 1] for i, line in enumerate(lines)
             if line == 'Fix? yes']
    unexpected = [line for line in fixed if not line.startswith(RECOVERY_ONLY)]
    assert not unexpected, result['repair'].stdout
    files = result['files']
    assert files['base.bin'] == guest.base_data, 'backing file data differs'
    assert files['boot.bin'] == guest.boot_data, 'overlay data differs'
    counter = int(files['counter'])
    low, high = window
    assert low <= counter <= high + 1, (
        'counter %d outside the snapshot window [%d, %d]'
        % (counter, low, high + 1))
    return image, counter


def assert_guest_untouched(guest, xml_before, state):
    assert guest.state() == state
    assert guest.dom.isPersistent()
    assert guest.inactive_xml() == xml_before
    if guest.dom.isActive():
        assert guest.dom.blockJobInfo('vda', 0) == {}
        assert guest.dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    assert not guest.dom.hasManagedSaveImage(0)
    assert guest.boots() == 1


def assert_no_leftovers(conf):
    directory = conf.libvirt.snapshots_directory
    leftovers = os.listdir(directory) if os.path.isdir(directory) else []
    assert leftovers == []
