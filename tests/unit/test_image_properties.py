import datetime
import types

from vmsnap_driver import guest
from vmsnap_driver import image_properties

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(seconds=2)
DISK = guest.Disk('vda', 'file', '/var/lib/libvirt/images/x.qcow2', 'qcow2',
                  False)


def test_record_and_nova_properties():
    instance = types.SimpleNamespace(
        uuid='u-1', name='vm', image_ref='img-1',
        system_metadata={'image_os_distro': 'debian',
                         'image_hw_disk_bus': 'virtio',
                         'image_disk_format': 'raw',
                         'image_os_hash_value': 'abc',
                         'image_base_image_ref': 'img-1',
                         'owner_user_name': 'alice'})
    props = image_properties.snapshot_properties(
        instance, image_properties.CapturePlan(
            'live', 'why', 'backup', DISK, '9.0.0', '7.2.0'))
    props.update(image_properties.instant_properties(
        image_properties.CaptureInstant(T0, T1)))
    assert props['image_type'] == 'snapshot'
    assert props['instance_uuid'] == 'u-1'
    assert props['base_image_ref'] == 'img-1'
    assert props['os_distro'] == 'debian'
    assert props['hw_disk_bus'] == 'virtio'
    for key in ('disk_format', 'os_hash_value', 'owner_user_name'):
        assert key not in props
    assert props['vmsnap_mode'] == 'live'
    assert props['vmsnap_capture_method'] == 'backup'
    assert props['vmsnap_source_disk'] == 'vda'
    assert props['vmsnap_capture_start'] == '2026-01-02T03:04:05+00:00'
    assert props['vmsnap_capture_end'] == '2026-01-02T03:04:07+00:00'
    assert props['vmsnap_consistency'] == 'crash-consistent'
    assert props['vmsnap_freeze_seconds'] == '0.000'
    assert props['vmsnap_disks'] == 'vda'
    assert props['vmsnap_qemu_version'] == '7.2.0'
    assert all(isinstance(v, str) for v in props.values())


def test_plain_instance_without_nova_fields():
    instance = types.SimpleNamespace(uuid='u-2', name='vm')
    props = image_properties.snapshot_properties(
        instance, image_properties.CapturePlan(
            'cold', 'r' * 300, 'managedsave', DISK, '9.0.0', '7.2.0'))
    assert 'base_image_ref' not in props
    assert len(props['vmsnap_mode_reason']) == 255
