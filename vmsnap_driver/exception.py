"""Errors a caller of the driver can catch, each saying what to do next.

libvirt, qemu-img and Glance failures are translated into these classes at
the module that talks to them, so callers never parse a libvirt error code
or an HTTP status.
"""


class VmsnapException(Exception):
    """Base class: the message is ``msg_fmt`` filled from keyword args."""

    msg_fmt = 'An unknown error occurred.'

    def __init__(self, message: str = None, **kwargs) -> None:
        self.kwargs = kwargs
        if message is None:
            message = self.msg_fmt % kwargs
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


class InstanceNotFound(VmsnapException):
    msg_fmt = ('Instance %(instance_uuid)s is not a libvirt domain on '
               '%(uri)s. Check the instance UUID (virsh -c %(uri)s list '
               '--all --uuid).')


class ImageNotFound(VmsnapException):
    msg_fmt = ('Image %(image_id)s does not exist in Glance, or is not '
               'visible to this user.')


class SnapshotImageNotFound(ImageNotFound):
    msg_fmt = ('Image %(image_id)s does not exist in Glance. Create the '
               'image (status "queued") before asking for a snapshot.')


class ImageNotQueued(VmsnapException):
    msg_fmt = ('Image %(image_id)s is "%(status)s", not "queued": a '
               'snapshot needs a new, empty image. Create a new image and '
               'try again.')


class GlanceUnavailable(VmsnapException):
    msg_fmt = ('Glance could not be reached (%(reason)s). Check the '
               '[glance] options (endpoint_override, auth_type) and that '
               'the image service is running.')


class GlanceFailed(GlanceUnavailable):
    msg_fmt = ('Glance failed (%(reason)s): it answered with a server '
               'error; see its log.')


class GlanceRefused(VmsnapException):
    msg_fmt = ('Glance refused to %(action)s image %(image_id)s: '
               '%(reason)s')


class InsufficientSpace(VmsnapException):
    msg_fmt = ('Not enough free space in %(directory)s for this snapshot: '
               'it needs about %(needed_mib)d MiB, %(free_mib)d MiB are '
               'free. Free some space or point [libvirt] '
               'snapshots_directory at a larger filesystem.')


class BlockJobTimeout(VmsnapException):
    msg_fmt = ('The live copy of disk %(disk)s of instance '
               '%(instance_uuid)s did not finish within %(timeout)d s; it '
               'was cancelled and the guest kept its disk. Raise [libvirt] '
               'block_job_timeout or block_copy_bandwidth, or use '
               'snapshot_mode = cold.')


class QemuImgFailed(VmsnapException):
    msg_fmt = ('qemu-img failed (exit code %(exit_code)s): %(command)s: '
               '%(stderr)s')


class SnapshotUnsupported(VmsnapException):
    msg_fmt = ('Cannot take a %(mode)s snapshot of instance '
               '%(instance_uuid)s: %(reason)s')


class HypervisorError(VmsnapException):
    msg_fmt = ('libvirt failed to %(action)s for instance '
               '%(instance_uuid)s: %(reason)s')


class GuestNotRestored(VmsnapException):
    msg_fmt = ('Instance %(instance_uuid)s could not be brought back to '
               '"%(state)s" after a snapshot: %(reason)s. Its saved state '
               'is kept by libvirt: start it with "virsh start '
               '%(instance_uuid)s".')


class SnapshotInProgress(VmsnapException):
    msg_fmt = ('Instance %(instance_uuid)s already has a snapshot or '
               'rebuild in progress (task state %(task_state)s). Wait for '
               'it to finish, then try again.')


class UnexpectedTaskState(VmsnapException):
    msg_fmt = ('Instance %(instance_uuid)s is in task state %(actual)s, '
               'not %(expected)s: another operation changed it.')


class ServiceStopping(VmsnapException):
    msg_fmt = ('vmsnap-compute is shutting down and accepts no new '
               'snapshots or rebuilds. Try again once it is back.')


class QuiesceUnavailable(VmsnapException):
    msg_fmt = ('Instance %(instance_uuid)s must be quiesced for this '
               'snapshot (%(why)s) but cannot be: %(reason)s. The guest was '
               'not touched. Install and start qemu-guest-agent in the '
               'guest with a virtio-serial channel '
               'org.qemu.guest_agent.0, or drop the requirement.')


class QuiesceFailed(VmsnapException):
    msg_fmt = ('The guest agent of instance %(instance_uuid)s could not '
               'freeze its filesystems: %(reason)s. A thaw was sent; the '
               'guest runs on. Check qemu-guest-agent in the guest, or set '
               '[libvirt] quiesce = auto to fall back to a crash-consistent '
               'snapshot.')


class RevertRefused(VmsnapException):
    msg_fmt = ('Cannot revert instance %(instance_uuid)s to image '
               '%(image_id)s: %(reason)s. Nothing was changed.')


class ImageCorrupt(VmsnapException):
    msg_fmt = ('Image %(image_id)s does not hold what its snapshot record '
               'says: %(reason)s. Nothing was changed; run "vmsnap verify '
               '%(image_id)s" and revert to another snapshot.')


class ChainBroken(VmsnapException):
    msg_fmt = ('Image %(image_id)s cannot be restored: its chain is broken: '
               '%(reason)s. Restore an earlier point of the chain, or a full '
               'snapshot.')


class ArchiveInvalid(VmsnapException):
    msg_fmt = ('The archive is refused at member %(member)s: %(reason)s. '
               'Nothing was imported; export the snapshot again, or fix '
               'the archive.')


class ImportRefused(VmsnapException):
    msg_fmt = ('The archive cannot be imported here: %(reason)s. Nothing '
               'was imported.')


class ExportRefused(VmsnapException):
    msg_fmt = 'Image %(image_id)s cannot be exported: %(reason)s.'
