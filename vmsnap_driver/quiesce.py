"""Freeze the guest's filesystems, through its agent, for one instant.

Whether to freeze is decided from configuration, the image properties Nova
uses (``hw_qemu_guest_agent``, ``os_require_quiesce``) and the guest; the
freeze itself wraps only the point-in-time step of a capture (starting a
backup export, or cancelling an in-sync block copy), never the copy.  A
thaw is always sent after a freeze attempt, even a failed one: an agent
that answered late may have frozen after all.
"""

import contextlib
import dataclasses
import time
from typing import Any, Iterator, Optional

from oslo_log import log as logging
from oslo_utils import strutils

from vmsnap_driver import exception
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import journal

LOG = logging.getLogger(__name__)

OFF = 'off'
AUTO = 'auto'
REQUIRED = 'required'

CRASH_CONSISTENT = 'crash-consistent'
FILESYSTEM_FROZEN = 'filesystem-frozen'


def _image_flag(instance: Any, name: str) -> bool:
    system_metadata = getattr(instance, 'system_metadata', None) or {}
    return strutils.bool_from_string(system_metadata.get('image_' + name))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Whether to freeze this snapshot, and whether failing to is fatal."""

    freeze: bool
    required: bool
    why: str


def plan(setting: str, instance: Any, guest: guest_mod.Guest, state: str,
         mode: str, memory: bool = False) -> Plan:
    """Decide before anything touches the guest; raise if impossible.

    :param memory: the memory state is captured with the disks: it holds
        the filesystems' caches, so there is nothing to freeze, and a
        requirement to quiesce is met.
    """
    if memory:
        return Plan(False, False, 'the memory state is captured with the '
                                  'disks')
    if _image_flag(instance, 'os_require_quiesce'):
        required, why = True, 'its image says os_require_quiesce=yes'
    else:
        required, why = setting == REQUIRED, '[libvirt] quiesce = required'
    if not required and setting == OFF:
        return Plan(False, False, '[libvirt] quiesce = off')
    has_agent = guest.has_agent_channel()
    if not required and not has_agent and not _image_flag(
            instance, 'hw_qemu_guest_agent'):
        return Plan(False, False, 'the guest has no agent channel')
    problem = None
    if not has_agent:
        problem = 'the domain has no %s channel' % guest_mod.AGENT_CHANNEL
    elif state != guest_mod.RUNNING:
        problem = 'the guest is %s, so its agent cannot answer' % state
    elif not guest.agent_connected():
        # A freeze would only fail, and leave the thaw in doubt.
        problem = ('its guest agent is not connected (not running in the '
                   'guest yet?)')
    elif mode != 'live':
        problem = ('a %s snapshot saves the guest instead of freezing it; '
                   'use snapshot_mode = live or auto' % mode)
    if problem:
        if required:
            raise exception.QuiesceUnavailable(
                instance_uuid=guest.uuid, why=why, reason=problem)
        return Plan(False, False, problem)
    return Plan(True, required, why if required else 'the guest has an '
                                                     'agent')


class Freezer:
    """Wraps a capture's point-in-time step; records what happened."""

    def __init__(self, guest: guest_mod.Guest, the_plan: Plan,
                 timeout: int) -> None:
        self._guest = guest
        self._plan = the_plan
        self._timeout = timeout
        self.level = CRASH_CONSISTENT
        self.seconds = 0.0

    @contextlib.contextmanager
    def frozen(self, record: Optional[journal.Record] = None
               ) -> Iterator[None]:
        if not self._plan.freeze:
            yield
            return
        record = journal.unrecorded(record)
        started = time.monotonic()
        record.update(frozen=True)
        try:
            count = self._guest.freeze_filesystems(self._timeout)
        except exception.HypervisorError as e:
            self._thaw(record)
            if self._plan.required:
                raise exception.QuiesceFailed(instance_uuid=self._guest.uuid,
                                              reason=e.message)
            LOG.warning('The guest agent could not freeze the filesystems '
                        '(%s); taking a crash-consistent snapshot instead',
                        e.message, instance_uuid=self._guest.uuid)
            yield
            return
        try:
            yield
        finally:
            self._thaw(record)
            self.seconds = time.monotonic() - started
        self.level = FILESYSTEM_FROZEN
        LOG.info('%(count)d filesystem(s) frozen for %(secs).3f s',
                 {'count': count, 'secs': self.seconds},
                 instance_uuid=self._guest.uuid)

    def _thaw(self, record: journal.Record) -> None:
        try:
            self._guest.thaw_filesystems()
            record.update(frozen=False)
        except exception.HypervisorError as e:
            try:
                gone = self._guest.is_gone()
            except exception.HypervisorError:
                gone = False
            if gone:
                # Shut down or deleted meanwhile: nothing is frozen.
                record.update(frozen=False)
                return
            LOG.error('Thawing the filesystems failed: %s. If the guest is '
                      'frozen, run "virsh domfsthaw %s".', e.message,
                      self._guest.uuid, instance_uuid=self._guest.uuid)
