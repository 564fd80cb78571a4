"""Finish or undo what a killed vmsnap left, from the journal, at start-up.

Every operation that changes a guest writes what it is about to change into
its journal record (:mod:`vmsnap_driver.journal`) and clears each change
once undone.  A record still on disk at start-up belongs to a process that
died mid-way; this module reads each one and puts things right, changing
only what the record says vmsnap changed:

- a snapshot: thaw the filesystems it froze, cancel the block copy or end
  the backup job it started (recognised by its destination file or NBD
  socket, never another's), restore the guest it saved, resume the guest it
  paused (a guest the user paused stays paused), delete the checkpoint it
  created unless its chain kept it, remove its workspace, and delete the
  images it created that never became ``active``;
- a revert: :func:`vmsnap_driver.restore.settle` keeps a guest that runs
  on its new disks, or puts the old disks back and restores the guest from
  its safety save;
- an import: :func:`vmsnap_driver.archive.settle` removes the domain,
  files and images of one that did not finish.

Each action is logged with the instance UUID; what happened to each
operation is returned, so a service can show it as a fault on the server.
"""

import contextlib
import dataclasses
import os
import shutil
from typing import Any, Callable, ContextManager, List, Optional

from oslo_log import log as logging

from vmsnap_driver import archive
from vmsnap_driver.capture import cold
from vmsnap_driver import chains
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal
from vmsnap_driver import restore

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    instance_uuid: str
    kind: str
    settled: bool
    message: str


# Seconds to wait for a save, restore or memory snapshot that libvirtd is
# still carrying out for a process that died: act on its result, not midway.
JOB_WAIT = 300


def recover(host: Any, images: Any, state_path: str,
            lock: Callable[[str], ContextManager] = (
                lambda _uuid: contextlib.nullcontext())) -> List[Outcome]:
    """Settle every record left behind; what happened to each.

    :param lock: the per-instance lock operations hold, so that an
        operation still running in another process is never undone
        under it: once it is taken, a record that is gone was finished.
    """
    outcomes = []
    for record in journal.pending(state_path):
        with lock(record.facts.get('instance_uuid') or '-'):
            if not os.path.exists(record.path):
                continue
            outcomes.append(_recover_one(host, images, record, state_path))
    return outcomes


def _recover_one(host: Any, images: Any, record: journal.Record,
                 state_path: str) -> Outcome:
    facts = record.facts
    uuid = facts.get('instance_uuid')
    LOG.warning('Found the record of an unfinished %(kind)s (%(id)s): '
                'recovering', {'kind': facts.get('kind'),
                               'id': record.id}, instance_uuid=uuid)
    try:
        try:
            guest = host.get_guest(uuid)
            guest.wait_for_state_job(JOB_WAIT)
        except exception.InstanceNotFound:
            guest = None
        if facts.get('kind') == restore.KIND:
            settled = _revert(guest, facts, state_path)
        elif facts.get('kind') == archive.KIND:
            settled = archive.settle(host, images, facts)
        else:
            settled = _snapshot(guest, facts, images, state_path)
    except Exception as e:  # one record must not stop the others
        LOG.error('Recovery of %(id)s failed: %(error)s; the record is '
                  'kept, run "vmsnap recover" again once the cause is '
                  'fixed', {'id': record.id, 'error': e},
                  instance_uuid=uuid)
        settled = False
    if settled:
        _remove_tree(facts.get('workdir'))
        record.remove()
    return Outcome(
        uuid, facts.get('kind'), settled,
        'vmsnap-compute stopped during this server\'s %s; %s at the '
        'next start' % (facts.get('kind'), 'it was undone' if settled
                        else 'it could not be undone: see the log'))


def _remove_tree(path: Optional[str]) -> None:
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
        LOG.info('Removed workspace %s', path)


def _snapshot(guest: Optional[guest_mod.Guest], facts: dict,
              images: Any, state_path: str) -> bool:
    if guest is not None:
        _give_back(guest, facts)
        if facts.get('checkpoint'):
            chains.settle(guest, state_path, facts['checkpoint'])
    for image_id in facts.get('images', []):
        try:
            status = images.get(image_id).get('status')
        except exception.ImageNotFound:
            continue
        if status != glance.ACTIVE:
            LOG.info('Deleting image %(image)s, left %(status)s',
                     {'image': image_id, 'status': status},
                     instance_uuid=facts['instance_uuid'])
            images.delete(image_id)
    return True


def _give_back(guest: guest_mod.Guest, facts: dict) -> None:
    """Undo, in reverse order, the changes the record says are in place."""
    uuid = guest.uuid
    if facts.get('frozen'):
        guest.thaw_filesystems()
        LOG.info('Filesystems thawed', instance_uuid=uuid)
    copy = facts.get('block_copy')
    if copy and guest.mirror_of(copy['disk']) == copy['dest']:
        guest.abort_block_job(copy['disk'])
        LOG.info('Block copy of %s cancelled', copy['disk'],
                 instance_uuid=uuid)
    socket = facts.get('backup_socket')
    if socket and guest.backup_socket() == socket:
        guest.abort_job()
        LOG.info('Backup job ended', instance_uuid=uuid)
    saved = facts.get('saved')
    shutoff = guest.state() == guest_mod.SHUTOFF
    if saved == cold.MANAGED:
        if shutoff and guest.has_managed_save():
            guest.launch()
            LOG.info('Guest restored from its managed save',
                     instance_uuid=uuid)
    elif saved and os.path.exists(saved):
        if shutoff:
            guest.restore(saved, paused=(
                facts.get('saved_state') == guest_mod.PAUSED))
            LOG.info('Guest restored from %s', saved, instance_uuid=uuid)
        # A guest that runs again (restored by hand) has moved on: its
        # old state would only roll it back over newer disks.
        os.unlink(saved)
    if facts.get('paused') and guest.state() == guest_mod.PAUSED:
        guest.resume()
        LOG.info('Guest vmsnap had paused is running again',
                 instance_uuid=uuid)


def _revert(guest: Optional[guest_mod.Guest], facts: dict,
            state_path: str) -> bool:
    if guest is None:
        LOG.error('The domain of an unfinished revert is gone; its files '
                  'are left as they are: %s', facts.get('disks'),
                  instance_uuid=facts.get('instance_uuid'))
        return False
    settled = restore.settle(guest, facts)
    if settled and (facts.get('committed') or facts.get('starting')):
        # The disks may be the snapshot's now: no delta rests on them.
        chains.reverted(guest, state_path)
    return settled
