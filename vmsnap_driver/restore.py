"""Revert a guest, in place, to one of its snapshots.

libvirt 9.0 cannot revert external snapshots (9.9 can), and an image in
Glance is no libvirt snapshot anyway: the revert is vmsnap's own.  It runs
in three steps, and only the last one touches the guest:

1. :func:`plan` refuses anything that is not an active vmsnap snapshot of
   this very guest, whose every disk (its group) is a file disk of the
   domain and whose memory state, if any, fits the domain (machine type,
   CPU, RAM).
2. :meth:`Revert.stage` downloads each disk image (a delta with the chain
   under it: :func:`vmsnap_driver.chains.assemble`), inspects it as
   untrusted, and rebuilds it beside the disk it will replace, in that
   disk's format and on that disk's own backing file (only what differs
   from the backing is written); its content digest must equal the
   snapshot's.  The memory state is downloaded and its sha256 proven.
3. :meth:`Revert.swap` saves the guest (its memory goes to the workspace,
   so that a failure from here on brings it back exactly as it was),
   renames the staged files over the disks, and restores the guest from the
   snapshot's memory, boots it, or leaves it off.  Only then are the old
   disks and the safety save deleted.

Every file of step 2 and every change of step 3 is in the operation's
journal record before it exists.  :func:`settle` ends an operation from
that record and what it finds on the host, in this process after a failure
and at the next start after a crash: a guest running on the new disks is
kept and the old files deleted; otherwise the old disks go back and the
guest is restored from its safety save.
"""

import dataclasses
import os
import shutil
from typing import Any, Callable, List, Optional
from xml.etree import ElementTree

from oslo_log import log as logging

from vmsnap_driver.capture import base as capture_base
from vmsnap_driver import chains
from vmsnap_driver import digest
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import image_properties
from vmsnap_driver import journal
from vmsnap_driver import memory_image
from vmsnap_driver import qemu_img
from vmsnap_driver import workspace

LOG = logging.getLogger(__name__)

KIND = 'revert'
SAFETY_FILE = 'before-revert.save'

Progress = Callable[[int], None]


@dataclasses.dataclass
class DiskTarget:
    """One guest disk and the snapshot image that will replace it.

    ``lineage`` is the image's chain from its full snapshot up to it
    (the image alone, for a full snapshot).
    """

    disk: guest_mod.Disk
    image: dict
    lineage: List[dict]


@dataclasses.dataclass
class Plan:
    guest: guest_mod.Guest
    image: dict
    disks: List[DiskTarget]
    memory: Optional[dict]
    # The guest's state when the snapshot was taken, and now.
    snapshot_state: str
    state: str

    def download_bytes(self) -> int:
        sizes = [i.get('size') or 0 for t in self.disks for i in t.lineage]
        if self.memory:
            sizes.append(int(self.memory.get('vmsnap_memory_size') or 0))
        return sum(sizes)


def plan(guest: guest_mod.Guest, images: Any, image_id: str,
         seal_key: Callable[[], bytes]) -> Plan:
    """Check that ``image_id`` can be reverted to; touch nothing.

    :param seal_key: gives the key memory images are sealed with
        (:func:`vmsnap_driver.memory_image.seal_key`); asked for only
        when the snapshot has a memory state.
    """
    def refuse(reason: str) -> None:
        raise exception.RevertRefused(instance_uuid=guest.uuid,
                                      image_id=image_id, reason=reason)

    if not guest.is_persistent():
        refuse('the domain is transient: saving it for the swap would '
               'undefine it')
    if guest.state() == guest_mod.SHUTOFF and guest.has_managed_save():
        refuse('the guest has a saved state (managedsave) that would resume '
               'over the reverted disks: start it, or discard the state '
               '("virsh managedsave-remove %s"), first' % guest.uuid)
    image = images.get(image_id)
    if image.get(memory_image.OF_PROPERTY):
        refuse('it is the memory state of snapshot %s: rebuild onto that '
               'image' % image[memory_image.OF_PROPERTY])
    _check_snapshot(image, guest.uuid, refuse)
    members = {image['vmsnap_source_disk']: image}
    for target, member_id in image_properties.group_members(image):
        member = images.get(member_id)
        _check_snapshot(member, guest.uuid, refuse)
        if member.get(image_properties.GROUP_ID_PROPERTY) != image.get(
                image_properties.GROUP_ID_PROPERTY):
            refuse('image %s of disk %s belongs to another snapshot'
                   % (member_id, target))
        members[target] = member
    disks = {d.target: d for d in guest.disks()}
    targets = []
    for target, member in members.items():
        disk = disks.get(target)
        if (disk is None or disk.source_type != 'file' or not disk.path
                or disk.readonly or disk.format not in qemu_img.FORMATS):
            refuse('the snapshot holds disk %s, which the domain no longer '
                   'has as a writable qcow2 or raw file' % target)
        try:
            lineage = chains.lineage(images, member)
        except exception.ChainBroken as e:
            refuse(str(e))
        targets.append(DiskTarget(disk, member, lineage))
    memory = None
    if image.get(memory_image.LINK_PROPERTY):
        memory = images.get(image[memory_image.LINK_PROPERTY])
        if (memory.get('status') != glance.ACTIVE or
                memory.get(memory_image.OF_PROPERTY) != image['id']):
            refuse('its memory image %s is missing or not active'
                   % image[memory_image.LINK_PROPERTY])
        problem = memory_image.unsealed(seal_key(), memory, image['id'],
                                        guest.uuid)
        if problem:
            refuse(problem)
        problem = memory_image.misfit(memory, guest.machine())
        if problem:
            refuse(problem + '; a memory state resumes only in the machine '
                             'it was saved from')
        others = {d.target for d in guest.disks() if not d.readonly} - set(
            members)
        if others:
            refuse('the memory state would resume over disk(s) %s, which '
                   'the snapshot does not hold' % ', '.join(sorted(others)))
    return Plan(guest=guest, image=image, disks=targets, memory=memory,
                snapshot_state=image.get(
                    image_properties.GUEST_STATE_PROPERTY,
                    guest_mod.RUNNING),
                state=guest.state())


def is_snapshot_of(image: dict, instance_uuid: str) -> bool:
    """Whether rebuilding ``instance_uuid`` onto ``image`` is a revert."""
    return (image.get('instance_uuid') == instance_uuid
            and bool(digest.recorded(image)[0])
            and not image.get(memory_image.OF_PROPERTY))


def _check_snapshot(image: dict, instance_uuid: str, refuse) -> None:
    if image.get('status') != glance.ACTIVE:
        refuse('image %s is "%s", not active' % (image['id'],
                                                 image.get('status')))
    if image.get('instance_uuid') != instance_uuid:
        refuse('image %s is not a snapshot of this server; rebuilding onto '
               'another image reinstalls a server, which vmsnap does not do'
               % image['id'])
    if not digest.recorded(image)[0] or not image.get('vmsnap_source_disk'):
        refuse('image %s was not taken by vmsnap (it has no %s)'
               % (image['id'], digest.RECORDED))


class Revert:
    """One revert, from staged files to the guest running on them."""

    def __init__(self, the_plan: Plan, images: Any, state_path: str,
                 snapshots_directory: str, progress: Progress) -> None:
        self.plan = the_plan
        self._images = images
        self._state_path = state_path
        self._snapshots_directory = snapshots_directory
        self._progress = progress

    def run(self) -> None:
        """Stage, swap, settle; the workspace outlives a failed settle.

        The workspace may hold the guest's safety save: it is removed only
        once the record is settled, else left for recovery.
        """
        guest = self.plan.guest
        for target in self.plan.disks:
            # A chain's point is at most as large as all its images.
            workspace.check_space(os.path.dirname(target.disk.path),
                                  sum(i.get('size') or 0
                                      for i in target.lineage))
        os.makedirs(self._snapshots_directory, mode=0o711, exist_ok=True)
        workspace.check_space(self._snapshots_directory,
                              self.plan.download_bytes())
        record = journal.begin(
            self._state_path, KIND, guest.uuid,
            image_id=self.plan.image['id'], state=self.plan.state,
            committed=False,
            disks=[{'path': t.disk.path,
                    'staged': '%s.vmsnap-new' % t.disk.path,
                    'old': '%s.vmsnap-old' % t.disk.path}
                   for t in self.plan.disks])
        workdir = os.path.join(self._snapshots_directory,
                               'vmsnap-revert-%s' % record.id)
        record.update(workdir=workdir)
        os.mkdir(workdir, 0o700)
        try:
            memory = self.stage(record.facts['disks'], workdir)
            self.swap(record, workdir, memory)
        finally:
            if settle(guest, record.facts):
                shutil.rmtree(workdir, ignore_errors=True)
                record.remove()

    def stage(self, files: List[dict], workdir: str) -> Optional[str]:
        """Every disk beside its original and the memory state, proven."""
        for target, names in zip(self.plan.disks, files):
            image = target.image
            download = chains.assemble(self._images, target.lineage,
                                       workdir, self._progress)
            _rebuild(download, image['disk_format'], target.disk,
                     names['staged'])
            os.unlink(download)
            expected, tree = digest.recorded(image)
            actual = digest.of_file(names['staged'], target.disk.format,
                                    tree=tree)
            if actual != expected:
                raise exception.ImageCorrupt(
                    image_id=image['id'], reason='the restored disk %s has '
                    'content %s %s, the snapshot recorded %s'
                    % (target.disk.target, 'tree sha256' if tree
                       else 'sha256', actual, expected))
            LOG.info('Disk %(disk)s staged from image %(image)s and proven '
                     'equal to the snapshot', {'disk': target.disk.target,
                                               'image': image['id']},
                     instance_uuid=self.plan.guest.uuid)
        if (not self.plan.memory
                or self.plan.state not in guest_mod.ACTIVE_STATES):
            # A shut-off guest stays off: its memory state is not used.
            return None
        path = os.path.join(workdir, capture_base.MEMORY_FILE)
        memory_image.download(self._images, self.plan.memory, path,
                              int(self.plan.guest.machine()['memory_mib']),
                              self._progress)
        _check_saved_domain(self.plan, path)
        return path

    def swap(self, record: journal.Record, workdir: str,
             memory: Optional[str]) -> None:
        """Stop the guest, put the staged disks in, start it from them."""
        guest = self.plan.guest
        if guest.state() != self.plan.state:
            # Started or stopped by someone else while the disks were
            # staged: the plan no longer holds.
            raise exception.RevertRefused(
                instance_uuid=guest.uuid, image_id=self.plan.image['id'],
                reason='the guest went from %s to %s during the revert; try '
                       'again' % (self.plan.state, guest.state()))
        active = self.plan.state in guest_mod.ACTIVE_STATES
        if active:
            safety = os.path.join(workdir, SAFETY_FILE)
            record.update(safety=safety)
            guest.save(safety)
            LOG.info('Guest saved before its disks are swapped',
                     instance_uuid=guest.uuid)
        for names in record.facts['disks']:
            os.replace(names['path'], names['old'])
            os.replace(names['staged'], names['path'])
        # From here a running guest runs on the new disks.
        record.update(starting=True)
        if not active:
            LOG.info('The guest was shut off: it stays off, on the '
                     'snapshot\'s disks', instance_uuid=guest.uuid)
        elif memory:
            guest.restore(memory,
                          paused=self.plan.snapshot_state == guest_mod.PAUSED,
                          domain_xml=guest.inactive_xml())
            LOG.info('Guest resumed from the snapshot\'s memory state',
                     instance_uuid=guest.uuid)
        elif self.plan.snapshot_state in guest_mod.ACTIVE_STATES:
            guest.launch()
            LOG.info('Guest booted from the snapshot\'s disks',
                     instance_uuid=guest.uuid)
        else:
            LOG.info('The snapshot was of a shut-off guest: it stays off',
                     instance_uuid=guest.uuid)
        record.update(committed=True)


def _rebuild(download: str, image_format: str, disk: guest_mod.Disk,
             staged: str) -> None:
    """Write the downloaded image as a file like ``disk``, at ``staged``.

    A qcow2 overlay stays an overlay on the same backing file: a new
    overlay is put on the download, then rebased onto the disk's backing,
    which writes only the clusters where the two differ.
    """
    top = qemu_img.info(disk.path, disk.format, force_share=True)[0]
    if disk.format == 'qcow2' and top.backing_file:
        # The snapshot's size, not the disk's: it may have been resized.
        size = qemu_img.info(download, image_format)[0].virtual_size
        qemu_img.create_overlay(staged, size, backing_file=download,
                                backing_format=image_format)
        qemu_img.rebase(staged, top.backing_file, top.backing_format)
    else:
        qemu_img.convert(download, image_format, staged, disk.format,
                         untrusted=True)
    stat = os.stat(disk.path)
    os.chmod(staged, stat.st_mode & 0o7777)
    os.chown(staged, stat.st_uid, stat.st_gid)


def _check_saved_domain(the_plan: Plan, path: str) -> None:
    """The memory state must be of this very domain."""
    xml = the_plan.guest.saved_domain_xml(path)
    uuid = ElementTree.fromstring(xml).findtext('uuid')
    if uuid != the_plan.guest.uuid:
        raise exception.ImageCorrupt(
            image_id=the_plan.memory['id'], reason='its memory state is of '
            'domain %s, not %s' % (uuid, the_plan.guest.uuid))


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def settle(guest: guest_mod.Guest, facts: dict) -> bool:
    """End a revert from its record: keep the new disks or put back the old.

    A revert that committed, or that got as far as starting the guest on
    the new disks and whose guest runs, is finished: the old disks and the
    safety save are deleted.  Any other is rolled back: the old disks go
    back in place and the guest is restored from its safety save, as it
    was.  Returns whether everything the record names is settled.
    """
    try:
        active = guest.state() in guest_mod.ACTIVE_STATES
        forward = facts.get('committed') or (facts.get('starting') and active)
        moved = [n for n in facts['disks'] if os.path.exists(n['old'])]
        if moved and active and not forward:
            # Someone started the guest on the swapped disks: putting the
            # old ones back under it would lose what it wrote.
            raise exception.HypervisorError(
                action='settle a revert', instance_uuid=guest.uuid,
                reason='the guest runs on disks swapped by an unfinished '
                       'revert; stop it, then run "vmsnap recover"')
        for names in facts['disks']:
            _remove(names['staged'])
            if not os.path.exists(names['old']):
                continue
            if forward:
                os.unlink(names['old'])
            else:
                os.replace(names['old'], names['path'])
                LOG.info('Disk %s put back as it was before the revert',
                         names['path'], instance_uuid=guest.uuid)
        safety = facts.get('safety')
        if safety and os.path.exists(safety):
            if not forward:
                guest.restore(safety,
                              paused=facts['state'] == guest_mod.PAUSED)
                LOG.info('Guest restored as it was before the revert',
                         instance_uuid=guest.uuid)
            os.unlink(safety)
    except (OSError, exception.VmsnapException) as e:
        LOG.error('The revert of instance %(uuid)s could not be settled '
                  '(%(error)s); its record %(id)s is kept for "vmsnap '
                  'recover"', {'uuid': guest.uuid, 'error': e,
                               'id': facts['id']},
                  instance_uuid=guest.uuid)
        return False
    return True


def revert(guest: guest_mod.Guest, images: Any, image_id: str,
           state_path: str, snapshots_directory: str,
           seal_key: Callable[[], bytes],
           progress: Progress = lambda _n: None) -> Plan:
    """Revert ``guest`` to snapshot ``image_id``; what was done."""
    the_plan = plan(guest, images, image_id, seal_key)
    LOG.info('Reverting to snapshot %(image)s (%(disks)s%(memory)s)',
             {'image': image_id,
              'disks': ', '.join(t.disk.target for t in the_plan.disks),
              'memory': ' and memory' if the_plan.memory else ''},
             instance_uuid=guest.uuid)
    Revert(the_plan, images, state_path, snapshots_directory,
           progress).run()
    chains.reverted(guest, state_path)
    LOG.info('Reverted to snapshot %s: the guest is %s', image_id,
             guest.state(), instance_uuid=guest.uuid)
    return the_plan
