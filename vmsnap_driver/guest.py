"""A thin wrapper around one libvirt domain and its disks' block jobs.

Each method is one libvirt call named for what the snapshot code wants from
it.  libvirt errors become :class:`vmsnap_driver.exception.HypervisorError`
here, so no caller parses libvirt error codes.
"""

import contextlib
import dataclasses
import os
import sys
import time
from typing import Callable, Iterator, List, Optional, Tuple
from xml.etree import ElementTree
from xml.sax import saxutils

import libvirt

from vmsnap_driver import exception

# libvirt's numeric domain states, named once.  "blocked" is a running guest
# waiting on a resource and "shutdown" one that is still shutting down: for a
# snapshot both are still running.
RUNNING = 'running'
PAUSED = 'paused'
SHUTOFF = 'shutoff'
CRASHED = 'crashed'
SUSPENDED = 'suspended'
NOSTATE = 'nostate'

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: SUSPENDED,
}

ACTIVE_STATES = (RUNNING, PAUSED)

# Seconds a cancelled backup job may take to go away.
JOB_END_TIMEOUT = 30

# libvirt's ways of saying a job or the domain is not there (any more).
GONE_ERRORS = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
               libvirt.VIR_ERR_OPERATION_INVALID)

AGENT_CHANNEL = 'org.qemu.guest_agent.0'
# Where libvirt (qemu:///system) keeps a running guest's pid file.
QEMU_RUN_DIR = '/run/libvirt/qemu'
# Nova's metadata in the domain XML (1.1 today; any version is read).
NOVA_NAMESPACE = 'http://openstack.org/xmlns/libvirt/nova/'


@dataclasses.dataclass(frozen=True)
class Disk:
    """A guest disk as the domain XML describes it."""

    target: str
    source_type: str
    path: Optional[str]
    format: Optional[str]
    readonly: bool


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What a domain tells of its server; None where it says nothing."""

    created: Optional[str] = None
    flavor: Optional[dict] = None
    image: Optional[str] = None
    user: Optional[str] = None
    project: Optional[str] = None
    # Epoch seconds.
    launched: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class BlockJob:
    """Progress of a block job, in bytes of the disk it copies."""

    cur: int
    end: int

    @property
    def ready(self) -> bool:
        # libvirt keeps cur < end until QEMU says a copy job reached its
        # mirroring phase, so equality means the copy is in sync.
        return self.cur == self.end


# Calls that change nothing, or that end what may have ended already: made
# once more after a libvirtd restart.  Any other is not repeated, since the
# first one may have taken effect before its answer was lost: its caller
# gets the error and looks at what is there.
RETRIED_CALLS = frozenset([
    'UUIDString', 'name', 'connect', 'state', 'info', 'XMLDesc',
    'isActive', 'isPersistent', 'hasManagedSaveImage', 'backupGetXMLDesc',
    'jobStats', 'blockJobInfo', 'checkpointLookupByName',
    'listAllCheckpoints', 'abortJob', 'blockJobAbort',
])


class _Domain:
    """A virDomain whose calls outlive a libvirtd restart.

    A restarted libvirtd leaves QEMU and its jobs running but closes every
    client connection, and the client learns it only when a call fails.
    The domain is then found again on a live connection for the calls
    that follow, and a call in RETRIED_CALLS is made once more: an
    operation that spans the restart can still end the job it started.
    """

    def __init__(self, domain: libvirt.virDomain,
                 lookup: Optional[Callable[[str], libvirt.virDomain]]
                 ) -> None:
        self._dom = domain
        self._lookup = lookup

    def __getattr__(self, name: str) -> Callable:
        def call(*args):
            try:
                return getattr(self._dom, name)(*args)
            except libvirt.libvirtError:
                if self._lookup is None or self._dom.connect().isAlive():
                    raise
                lost = sys.exc_info()[1]
            # A libvirtError from here (the domain is gone) reaches the
            # caller's handling, as from the call itself.
            self._dom = self._lookup(self._dom.UUIDString())
            if name not in RETRIED_CALLS:
                raise lost
            return getattr(self._dom, name)(*args)
        return call


def memory_kib(root: ElementTree.Element) -> int:
    """A domain XML's ``<memory>``, in KiB whatever its unit."""
    memory = root.find('./memory')
    factor = {'KiB': 1, 'k': 1, 'MiB': 1024, 'M': 1024,
              'GiB': 1024 ** 2, 'G': 1024 ** 2}
    return int(memory.text) * factor.get(memory.get('unit', 'KiB'), 1)


class Guest:
    """One libvirt domain, found by the instance's UUID.

    :param lookup: finds the domain again by UUID on a live connection,
        after libvirtd restarted.
    """

    def __init__(self, domain: libvirt.virDomain,
                 lookup: Optional[Callable[[str], libvirt.virDomain]] = None
                 ) -> None:
        self._domain = _Domain(domain, lookup)
        self.uuid = domain.UUIDString()
        self.name = domain.name()

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as e:
            raise exception.HypervisorError(
                action=action, instance_uuid=self.uuid,
                reason=e.get_error_message())

    def _raise_unless_gone(self, error: libvirt.libvirtError,
                           action: str) -> None:
        """Return if ``error`` says the job or domain is not there.

        Anything else raises: libvirtd not answering is not an answer.
        """
        if error.get_error_code() not in GONE_ERRORS:
            raise exception.HypervisorError(
                action=action, instance_uuid=self.uuid,
                reason=error.get_error_message())

    # -- state --------------------------------------------------------
    def state(self) -> str:
        with self._translated('read the domain state'):
            return STATES.get(self._domain.state()[0], NOSTATE)

    def machine(self) -> dict:
        """What a saved memory state needs of the domain it resumes in."""
        with self._translated('read the domain XML'):
            root = ElementTree.fromstring(self._domain.XMLDesc(0))
        os_type = root.find('./os/type')
        cpu = root.find('./cpu')
        model = cpu.find('model') if cpu is not None else None
        kib = memory_kib(root)
        return {
            'machine_type': os_type.get('machine', '') if os_type is not None
            else '',
            'cpu_mode': cpu.get('mode', 'custom') if cpu is not None
            else 'default',
            'cpu_model': model.text if model is not None and model.text
            else '',
            'memory_mib': str(kib // 1024),
        }

    def owner_project(self) -> Optional[str]:
        """The project Nova recorded as the server's owner, if any."""
        return self.facts().project

    def facts(self) -> 'ServerFacts':
        """What the domain holds about the server it is.

        Nova writes ``<nova:instance>`` metadata (any version is read):
        creation time, flavor, root image, owner.  The launch time is when
        libvirt started its QEMU (its pid file), None while shut off.
        """
        with self._translated('read the domain XML'):
            root = ElementTree.fromstring(self._domain.XMLDesc(0))
        instance = next((e for e in root.iter() if isinstance(e.tag, str)
                         and e.tag.startswith('{' + NOVA_NAMESPACE)
                         and e.tag.endswith('}instance')), None)
        facts = {}
        if instance is not None:
            ns = instance.tag[:-len('instance')]
            facts['created'] = (instance.findtext(ns + 'creationTime')
                                or None)
            flavor = instance.find(ns + 'flavor')
            if flavor is not None:
                facts['flavor'] = dict(
                    {c.tag[len(ns):]: c.text for c in flavor},
                    name=flavor.get('name'))
            root_image = instance.find(ns + 'root')
            if root_image is not None and root_image.get('type') == 'image':
                facts['image'] = root_image.get('uuid')
            for who in ('user', 'project'):
                node = instance.find('%sowner/%s%s' % (ns, ns, who))
                if node is not None:
                    facts[who] = node.get('uuid')
        pidfile = os.path.join(QEMU_RUN_DIR, '%s.pid' % root.findtext('name'))
        if root.get('id'):
            try:
                facts['launched'] = os.stat(pidfile).st_mtime
            except OSError:
                pass  # stopped meanwhile, or another libvirt layout
        return ServerFacts(**facts)

    def is_gone(self) -> bool:
        """The guest no longer runs: shut off, crashed, or deleted.

        Raises HypervisorError when libvirtd cannot tell.
        """
        try:
            state = self._domain.state()[0]
        except libvirt.libvirtError as e:
            self._raise_unless_gone(e, 'read the domain state')
            return True
        return STATES.get(state, NOSTATE) not in ACTIVE_STATES

    def hardware(self) -> Tuple[int, int]:
        """Virtual CPUs and memory (MiB), for a flavor-like description."""
        with self._translated('read the domain info'):
            _state, max_mem_kib, _mem, vcpus, _cpu_time = self._domain.info()
        return vcpus, max_mem_kib // 1024

    def is_persistent(self) -> bool:
        with self._translated('read the domain persistence'):
            return bool(self._domain.isPersistent())

    def inactive_xml(self) -> str:
        with self._translated('read the domain XML'):
            return self._domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def disks(self) -> List[Disk]:
        """Block devices that are disks (not cdroms or floppies)."""
        with self._translated('read the domain XML'):
            xml = self._domain.XMLDesc(0)
        disks = []
        for node in ElementTree.fromstring(xml).findall('./devices/disk'):
            if node.get('device', 'disk') != 'disk':
                continue
            source = node.find('source')
            driver = node.find('driver')
            disks.append(Disk(
                target=node.find('target').get('dev'),
                source_type=node.get('type'),
                path=source.get('file') if source is not None else None,
                format=driver.get('type') if driver is not None else None,
                readonly=node.find('readonly') is not None))
        return disks

    def root_disk(self) -> Disk:
        """The first disk, which the guest boots from, as Nova assumes."""
        disks = self.disks()
        if not disks:
            raise exception.SnapshotUnsupported(
                mode='any', instance_uuid=self.uuid,
                reason='the domain has no disk')
        return disks[0]

    def writable_file_disks(self) -> List[Disk]:
        """Every disk a snapshot of "all disks" captures, boot disk first."""
        return [d for d in self.disks()
                if d.source_type == 'file' and d.path and not d.readonly]

    # -- lifecycle ----------------------------------------------------
    def managed_save(self, paused: bool) -> None:
        """Save memory to libvirt's managed save file and stop QEMU.

        :param paused: restore the guest paused, as it was when saved.
        """
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else 0
        with self._translated('save the guest (managedsave)'):
            self._domain.managedSave(flags)

    def launch(self) -> None:
        """Start the domain; from its managed save when it has one."""
        with self._translated('start the guest'):
            self._domain.create()

    def destroy(self) -> None:
        """Stop QEMU at once (an import that failed, nothing to keep)."""
        with self._translated('stop the guest'):
            self._domain.destroy()

    def shutdown(self) -> None:
        """Ask the guest to shut down (ACPI); it may not listen."""
        with self._translated('ask the guest to shut down'):
            self._domain.shutdown()

    def pause(self) -> None:
        with self._translated('pause the guest'):
            self._domain.suspend()

    def undefine(self) -> None:
        """Undefine it, its managed save too; an NVRAM file is kept."""
        with self._translated('undefine the domain'):
            self._domain.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)

    def has_managed_save(self) -> bool:
        with self._translated('look for a managed save image'):
            return bool(self._domain.hasManagedSaveImage(0))

    def virt_type(self) -> str:
        """The domain's type (``qemu`` for TCG, ``kvm``)."""
        with self._translated('read the domain XML'):
            xml = self._domain.XMLDesc(0)
        return ElementTree.fromstring(xml).get('type')

    def launch_paused(self) -> None:
        """Start the domain paused; from its managed save when it has one."""
        with self._translated('start the guest paused'):
            self._domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def resume(self) -> None:
        with self._translated('resume the guest'):
            self._domain.resume()

    def save_memory(self, path: str) -> None:
        """Write memory and device state to ``path``; leave the guest paused.

        An external memory snapshot with every disk left to the caller
        (``snapshot='manual'``): QEMU writes the memory while the guest
        runs and pauses it only for the last pass, so the state is final
        when this returns.  No libvirt snapshot metadata, no disk overlay:
        the domain is untouched.  The file has ``virDomainSave``'s format.
        """
        disks = ''.join("<disk name=%s snapshot='manual'/>"
                        % saxutils.quoteattr(d.target) for d in self.disks())
        xml = ("<domainsnapshot><memory snapshot='external' file=%s/>"
               "<disks>%s</disks></domainsnapshot>"
               % (saxutils.quoteattr(path), disks))
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE |
                 libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC |
                 libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        with self._translated('save the guest\'s memory'):
            self._domain.snapshotCreateXML(xml, flags)

    def save(self, path: str) -> None:
        """Save memory to ``path`` and stop QEMU (``virDomainSave``)."""
        with self._translated('save the guest'):
            self._domain.saveFlags(path, None, 0)

    def restore(self, path: str, paused: bool,
                domain_xml: Optional[str] = None) -> None:
        """Start the domain from a saved memory state, without booting it.

        :param paused: leave it paused, else running, whatever it was when
            saved.
        :param domain_xml: the definition to run it with (the saved one
            when None); libvirt refuses one whose guest ABI differs.
        """
        flags = (libvirt.VIR_DOMAIN_SAVE_PAUSED if paused
                 else libvirt.VIR_DOMAIN_SAVE_RUNNING)
        with self._translated('restore the guest from its saved memory'):
            self._domain.connect().restoreFlags(path, domain_xml, flags)

    def saved_domain_xml(self, path: str) -> str:
        """The domain XML a saved memory state was taken with."""
        with self._translated('read a saved memory state'):
            return self._domain.connect().saveImageGetXMLDesc(path, 0)

    # -- guest agent --------------------------------------------------
    def has_agent_channel(self) -> bool:
        """The domain has the virtio-serial port qemu-guest-agent uses."""
        with self._translated('read the domain XML'):
            xml = self._domain.XMLDesc(0)
        return any(
            target.get('name') == AGENT_CHANNEL
            for target in ElementTree.fromstring(xml).findall(
                './devices/channel/target'))

    def agent_connected(self) -> bool:
        """qemu-guest-agent is on the other end of its channel now.

        libvirt says so in the live XML (``state='connected'``); an older
        libvirt that does not say is taken at its word that it might be.
        """
        with self._translated('read the domain XML'):
            xml = self._domain.XMLDesc(0)
        for target in ElementTree.fromstring(xml).findall(
                './devices/channel/target'):
            if target.get('name') == AGENT_CHANNEL:
                return target.get('state', 'connected') == 'connected'
        return False

    def freeze_filesystems(self, timeout: int) -> int:
        """Ask the guest agent to freeze every filesystem it can.

        The agent timeout is set first, so a hung agent fails the call
        after ``timeout`` seconds instead of blocking the snapshot.
        """
        with self._translated('freeze the filesystems'):
            self._domain.agentSetResponseTimeout(timeout, 0)
            return self._domain.fsFreeze(None, 0)

    def thaw_filesystems(self) -> int:
        """Thaw, then give the agent back libvirt's default timeout.

        A guest that stopped or was deleted meanwhile took its freeze
        along: libvirt's "not running" is an answer, not a failure.
        """
        try:
            try:
                return self._domain.fsThaw(None, 0)
            except libvirt.libvirtError as e:
                self._raise_unless_gone(e, 'thaw the filesystems')
                return 0
        finally:
            try:
                self._domain.agentSetResponseTimeout(
                    libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)
            except libvirt.libvirtError as e:
                self._raise_unless_gone(e, 'reset the guest agent timeout')

    # -- backup jobs --------------------------------------------------
    def backup_begin(self, targets: List[str], socket_path: str,
                     scratch_dir: str, incremental: Optional[str] = None,
                     checkpoint: Optional[str] = None) -> None:
        """Export ``targets`` as they are now over NBD (backup, pull mode).

        All the disks are fixed at the same instant.  QEMU keeps each view
        still: before the guest overwrites a block, the old content is
        copied into that disk's scratch file, so the exports never change
        while the guest runs on.  Each export is named after its target.

        :param incremental: a checkpoint: each export also carries the
            bitmap of what changed since it (``backup-<target>``).
        :param checkpoint: create this checkpoint of ``targets`` at the
            same instant (a persistent bitmap in each qcow2).
        """
        disks = ''.join(
            "<disk name=%s backup='yes' type='file'><scratch file=%s/>"
            "</disk>" % (saxutils.quoteattr(target), saxutils.quoteattr(
                os.path.join(scratch_dir, target + '.qcow2')))
            for target in targets)
        others = [d.target for d in self.disks() if d.target not in targets]
        disks += ''.join("<disk name=%s backup='no'/>"
                         % saxutils.quoteattr(t) for t in others)
        xml = ("<domainbackup mode='pull'>%s"
               "<server transport='unix' socket=%s/>"
               "<disks>%s</disks></domainbackup>"
               % ('<incremental>%s</incremental>' % saxutils.escape(
                   incremental) if incremental else '',
                  saxutils.quoteattr(socket_path), disks))
        checkpoint_xml = None
        if checkpoint:
            checkpoint_xml = (
                "<domaincheckpoint><name>%s</name><disks>%s%s</disks>"
                "</domaincheckpoint>" % (
                    saxutils.escape(checkpoint),
                    ''.join("<disk name=%s checkpoint='bitmap'/>"
                            % saxutils.quoteattr(t) for t in targets),
                    ''.join("<disk name=%s checkpoint='no'/>"
                            % saxutils.quoteattr(t) for t in others)))
        with self._translated('start a backup of %s' % ', '.join(targets)):
            self._domain.backupBegin(xml, checkpoint_xml, 0)

    # -- checkpoints --------------------------------------------------
    def checkpoint_xml(self, name: str) -> Optional[str]:
        """The checkpoint's definition, to redefine it later; None if none.

        libvirt forgets checkpoints when the domain is undefined (Nova
        does that on a hard reboot); the bitmaps stay in the qcow2.
        """
        try:
            checkpoint = self._domain.checkpointLookupByName(name, 0)
            return checkpoint.getXMLDesc(
                libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise exception.HypervisorError(
                    action='look up checkpoint %s' % name,
                    instance_uuid=self.uuid, reason=e.get_error_message())
            return None

    def redefine_checkpoint(self, xml: str) -> None:
        """(Re)define a checkpoint and prove its bitmaps sound.

        libvirt checks that every disk still has the bitmap, consistent:
        an unclean QEMU exit or a bitmap removed behind libvirt's back
        fails here instead of giving a delta with holes.
        """
        with self._translated('validate a checkpoint'):
            self._domain.checkpointCreateXML(
                xml, libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE |
                libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE)

    def delete_checkpoint(self, name: str,
                          metadata_only: bool = False) -> None:
        """Delete a checkpoint if it is there.

        Its bitmap is merged into its parent checkpoint's, so a backup
        from an older checkpoint still sees every change.
        """
        flags = (libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
                 if metadata_only else 0)
        try:
            self._domain.checkpointLookupByName(name, 0).delete(flags)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise exception.HypervisorError(
                    action='delete checkpoint %s' % name,
                    instance_uuid=self.uuid, reason=e.get_error_message())

    def checkpoints(self) -> List[str]:
        with self._translated('list checkpoints'):
            return [c.getName() for c in self._domain.listAllCheckpoints(0)]

    def backup_socket(self) -> Optional[str]:
        """The NBD socket of the domain's pull backup, if one runs.

        Raises HypervisorError when libvirtd cannot tell (it is gone):
        not knowing is not "no job".
        """
        try:
            xml = self._domain.backupGetXMLDesc(0)
        except libvirt.libvirtError as e:
            self._raise_unless_gone(e, 'look for a backup job')
            return None
        server = ElementTree.fromstring(xml).find('./server')
        return server.get('socket') if server is not None else None

    def wait_for_state_job(self, timeout: float) -> None:
        """Wait while libvirtd saves, restores or snapshots the domain.

        A process that dies mid-call leaves libvirtd to finish it: its
        outcome, not its middle, is what recovery must see.
        """
        busy = (libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE,
                libvirt.VIR_DOMAIN_JOB_OPERATION_RESTORE,
                libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stats = self._domain.jobStats(0)
            except libvirt.libvirtError:
                return
            if (stats.get('type', libvirt.VIR_DOMAIN_JOB_NONE)
                    == libvirt.VIR_DOMAIN_JOB_NONE
                    or stats.get('operation') not in busy):
                return
            time.sleep(0.5)

    def abort_job(self, timeout: float = JOB_END_TIMEOUT) -> None:
        """End the domain's pull backup and wait until it is gone.

        libvirt returns once QEMU was told to cancel; the job (and its
        export and scratch files) goes a moment later.  A job still there
        after ``timeout`` seconds is an error, not a silent leftover.
        """
        with self._translated('end the backup job'):
            self._domain.abortJob()
        self._wait_gone(lambda: self.backup_socket() is None,
                        'end the backup job', timeout)

    def _wait_gone(self, gone: Callable[[], bool], action: str,
                   timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not gone():
            if time.monotonic() > deadline:
                raise exception.HypervisorError(
                    action=action, instance_uuid=self.uuid,
                    reason='it is still there %d s after it was cancelled'
                           % timeout)
            time.sleep(0.05)

    # -- block jobs ---------------------------------------------------
    def block_copy(self, disk: str, dest_path: str, dest_format: str,
                   bandwidth: int = 0) -> None:
        """Mirror ``disk`` into an existing image that shares its backing.

        The job is transient so that a persistent domain can keep its
        definition: without the flag libvirt refuses, and Nova undefines the
        domain for the whole copy instead.

        :param bandwidth: bytes per second, 0 for no limit.
        """
        dest_xml = ("<disk type='file'><source file=%s/>"
                    "<driver type=%s/></disk>"
                    % (saxutils.quoteattr(dest_path),
                       saxutils.quoteattr(dest_format)))
        params = {}
        if bandwidth:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = bandwidth
        flags = (libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW |
                 libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT |
                 libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        with self._translated('start a block copy of %s' % disk):
            self._domain.blockCopy(disk, dest_xml, params, flags)

    def block_job(self, disk: str) -> Optional[BlockJob]:
        """The disk's block job, or None when it has none."""
        with self._translated('query the block job on %s' % disk):
            info = self._domain.blockJobInfo(disk, 0)
        if not info:
            return None
        return BlockJob(cur=info['cur'], end=info['end'])

    def mirror_of(self, disk: str) -> Optional[str]:
        """The file a block copy of ``disk`` writes into, if one runs."""
        with self._translated('read the domain XML'):
            xml = self._domain.XMLDesc(0)
        for node in ElementTree.fromstring(xml).findall('./devices/disk'):
            target = node.find('target')
            mirror = node.find('mirror')
            if target is not None and target.get('dev') == disk and (
                    mirror is not None):
                source = mirror.find('source')
                return (source.get('file') if source is not None
                        else mirror.get('file'))
        return None

    def abort_block_job(self, disk: str,
                        timeout: float = JOB_END_TIMEOUT) -> None:
        """Cancel the disk's block job and wait, bounded, until it is gone.

        Cancelling a copy that is in sync leaves the destination holding the
        disk as it was at this instant, while the guest keeps its own disk
        (no pivot).  libvirt's synchronous abort would wait for QEMU
        without limit: a hung job would hang the snapshot with it.
        """
        with self._translated('cancel the block job on %s' % disk):
            self._domain.blockJobAbort(
                disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC)
        self._wait_gone(lambda: self.block_job(disk) is None,
                        'cancel the block job on %s' % disk, timeout)
