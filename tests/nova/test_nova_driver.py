"""vmsnap loaded by Nova's own loader, called as Nova's compute manager does.

A real guest, the real libvirtd, the real local Glance reached through
Nova's image API; Nova's stock driver snapshots the same guest for
comparison.
"""

import os
import tempfile

import libvirt
import pytest

nova = pytest.importorskip('nova')

from nova.compute import task_states  # noqa: E402
import nova.conf  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
import nova.privsep  # noqa: E402
from nova.virt import driver as virt_driver  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402

from tests.functional import checks  # noqa: E402
from tests.functional import testguest  # noqa: E402

CONF = nova.conf.CONF


class ManagerTaskStates:
    """update_task_state as Nova's manager: compare-and-swap on the state."""

    def __init__(self):
        self.state = task_states.IMAGE_SNAPSHOT
        self.calls = []

    def __call__(self, task_state, expected_state=task_states.IMAGE_SNAPSHOT):
        if self.state != expected_state:
            raise AssertionError('task state %s, expected %s'
                                 % (self.state, expected_state))
        self.state = task_state
        self.calls.append(task_state)


@pytest.fixture(scope='module')
def nova_conf(glance_url, workroot):
    objects.register_all()
    CONF([], project='nova', default_config_files=[])
    state = tempfile.mkdtemp(dir=workroot, prefix='nova-')
    os.chmod(state, 0o755)   # QEMU must reach the snapshot scratch files
    CONF.set_override('state_path', state)
    CONF.set_override('instances_path', state + '/instances')
    CONF.set_override('lock_path', state + '/lock',
                      group='oslo_concurrency')
    CONF.set_override('virt_type', 'qemu', group='libvirt')
    CONF.set_override('connection_uri', 'qemu:///system', group='libvirt')
    CONF.set_override('snapshots_directory', state + '/snapshots',
                      group='libvirt')
    CONF.set_override('endpoint_override', glance_url, group='glance')
    nova.privsep.sys_admin_pctxt.set_client_mode(False)
    yield CONF


@pytest.fixture(scope='module')
def nova_driver(nova_conf):
    driver = virt_driver.load_compute_driver(fake.FakeVirtAPI(),
                                             'vmsnap.LibvirtDriver')
    driver.init_host('vmsnap-test-host')
    return driver


def make_instance(guest):
    return objects.Instance(
        uuid=guest.uuid, display_name=guest.name,
        project_id='project', user_id='user', kernel_id='', ramdisk_id='',
        os_type=None, image_ref='', system_metadata={},
        task_state=task_states.IMAGE_SNAPSHOT)


def test_nova_loads_vmsnap_driver(nova_driver):
    from vmsnap_driver import nova as vmsnap_nova
    assert isinstance(nova_driver, vmsnap_nova.LibvirtDriver)
    assert isinstance(nova_driver, libvirt_driver.LibvirtDriver)
    assert CONF.vmsnap.snapshot_mode == 'auto'


def test_snapshot_as_nova_manager_calls_it(nova_driver, conn, workroot,
                                           glance, queued_image):
    guest = testguest.TestGuest(
        conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'))
    try:
        guest.start()
        xml = guest.inactive_xml()
        image_id = queued_image()
        context = nova_context.RequestContext('user', 'project',
                                              auth_token='a-token')
        tasks = ManagerTaskStates()
        before = guest.last_counter()
        nova_driver.snapshot(context, make_instance(guest), image_id, tasks)
        after = guest.last_counter()

        assert tasks.calls == [task_states.IMAGE_PENDING_UPLOAD,
                               task_states.IMAGE_UPLOADING]
        image, counter = checks.assert_image_holds(
            glance, image_id, guest, workroot, (before, after))
        # Nova's own snapshot metadata came along.
        assert image['image_location'] == 'snapshot'
        assert image['owner_id'] == 'project'
        assert image['vmsnap_mode'] == 'live'
        guest.wait_counter_above(counter + 1)
        checks.assert_guest_untouched(guest, xml, libvirt.VIR_DOMAIN_RUNNING)

        # Nova's stock driver, same guest, same run: the comparison.
        stock_image = queued_image()
        libvirt_driver.LibvirtDriver.snapshot(
            nova_driver, context, make_instance(guest), stock_image,
            ManagerTaskStates())
        assert glance.images.get(stock_image)['status'] == 'active'
    finally:
        guest.destroy()


def rebuild_kwargs(context, instance, image_id):
    """What Nova's manager passes to driver.rebuild, as keywords."""
    return dict(
        context=context, instance=instance,
        image_meta=objects.ImageMeta.from_dict({
            'id': image_id, 'disk_format': 'qcow2',
            'container_format': 'bare', 'properties': {}}),
        injected_files=[], admin_password=None, allocations={},
        bdms=objects.BlockDeviceMappingList(objects=[]),
        detach_block_devices=lambda *a, **k: None,
        attach_block_devices=lambda *a, **k: None,
        network_info=[], evacuate=False, block_device_info=None,
        preserve_ephemeral=False, accel_uuids=[],
        reimage_boot_volume=False)


def test_rebuild_onto_own_snapshot_reverts_with_memory(
        nova_driver, conn, workroot, glance):
    guest = testguest.TestGuest(
        conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'), agent=True)
    created = []
    try:
        guest.start()
        context = nova_context.RequestContext('user', 'project',
                                              auth_token='a-token')
        image = glance.images.create(name='nova memory snapshot',
                                     vmsnap_memory='true')
        created.append(image['id'])
        before = guest.last_counter()
        nova_driver.snapshot(context, make_instance(guest), image['id'],
                             ManagerTaskStates())
        after = guest.last_counter()
        snapshot = glance.images.get(image['id'])
        assert snapshot['vmsnap_consistency'] == 'memory'
        memory = glance.images.get(snapshot['vmsnap_memory_image'])
        created.append(memory['id'])
        assert memory['os_hidden'] is True
        assert memory['container_format'] == 'compressed'

        assert guest.run('echo later > /mnt/later && sync')[0] == 0
        guest.wait_counter_above(after + 3)
        instance = make_instance(guest)
        instance.task_state = task_states.REBUILDING
        offset = len(guest.console_text())
        nova_driver.rebuild(**rebuild_kwargs(context, instance,
                                             image['id']))

        assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
        assert guest.boots() == 1
        assert guest.run('test -e /mnt/later')[0] == 1
        first = guest.resumed_counter(offset)
        assert before <= first <= after + 1, (before, first, after)

        # Any other image is Nova's to rebuild onto.
        other = glance.images.create(name='not a snapshot',
                                     disk_format='raw',
                                     container_format='bare')
        created.append(other['id'])
        with pytest.raises(NotImplementedError):
            nova_driver.rebuild(**rebuild_kwargs(context, instance,
                                                 other['id']))
    finally:
        for image_id in created:
            glance.images.delete(image_id)
        guest.destroy()


def test_incremental_snapshots_and_a_rebuild_onto_a_delta(
        nova_driver, conn, workroot, glance):
    """The request property works inside Nova, and a delta reverts."""
    guest = testguest.TestGuest(
        conn, tempfile.mkdtemp(dir=workroot, prefix='guest-'), agent=True)
    created = []
    try:
        guest.start()
        context = nova_context.RequestContext('user', 'project',
                                              auth_token='a-token')

        def snapshot(name):
            image = glance.images.create(name=name,
                                         vmsnap_incremental='true')
            created.append(image['id'])
            nova_driver.snapshot(context, make_instance(guest), image['id'],
                                 ManagerTaskStates())
            return glance.images.get(image['id'])
        full = snapshot('nova chain 0')
        assert guest.run('echo one > /mnt/one && sync')[0] == 0
        delta = snapshot('nova chain 1')
        assert full['vmsnap_delta'] == 'false'
        assert delta['vmsnap_delta'] == 'true'
        assert delta['vmsnap_parent_image_id'] == full['id']
        assert glance.images.get(full['id'])['protected'] is True
        assert 'not bootable alone' in delta['name']

        assert guest.run('echo two > /mnt/two && sync')[0] == 0
        instance = make_instance(guest)
        instance.task_state = task_states.REBUILDING
        nova_driver.rebuild(**rebuild_kwargs(context, instance,
                                             delta['id']))
        assert guest.run('cat /mnt/one') == (0, 'one\n')
        assert guest.run('test -e /mnt/two')[0] == 1
    finally:
        for image_id in reversed(created):
            glance.images.update(image_id, protected=False)
            glance.images.delete(image_id)
        guest.destroy()


def test_vmsnap_section_is_listed_for_nova_conf():
    import subprocess
    import sys
    # Outside the source tree: a stale egg-info there would hide the
    # installed entry points.
    out = subprocess.run(
        [sys.executable, '-m', 'oslo_config.generator', '--namespace',
         'vmsnap.nova'], check=True, capture_output=True, text=True,
        cwd=tempfile.gettempdir()).stdout
    assert '[vmsnap]' in out
    for option in ('#snapshot_mode = auto', '#quiesce = auto',
                   '#snapshot_disks = root', '#block_job_timeout = 600'):
        assert option in out
    assert 'connection_uri' not in out
