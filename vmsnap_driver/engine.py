"""The snapshot engine: plan, capture, flatten or stream, upload.

The data path reads top to bottom in :meth:`SnapshotEngine.take`.  Each
step lives in its own module; the engine only sequences them and reports
task states the way Nova's libvirt driver does.  It is shared by vmsnap's
own driver and by the Nova driver subclass: they differ only in where the
options live and how images are reached (``images``).
"""

from concurrent import futures
import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Dict, List, Optional
import uuid as uuidlib

from oslo_context import context as oslo_context
from oslo_log import log as logging
from oslo_utils import strutils

from vmsnap_driver import capture
from vmsnap_driver.capture import base as capture_base
from vmsnap_driver import chains as snapshot_chains
from vmsnap_driver import decide
from vmsnap_driver import digest
from vmsnap_driver import domain_record
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import guest as guest_mod
from vmsnap_driver import host as host_mod
from vmsnap_driver import image_properties
from vmsnap_driver import image_stream
from vmsnap_driver import journal
from vmsnap_driver import memory_image
from vmsnap_driver import nbd
from vmsnap_driver import qemu_img
from vmsnap_driver import quiesce
from vmsnap_driver import streams
from vmsnap_driver import workspace

LOG = logging.getLogger(__name__)

# The kind of journal record a snapshot writes.
KIND = 'snapshot'

# Nova's task states, as its compute manager expects them.
IMAGE_PENDING_UPLOAD = 'image_pending_upload'
IMAGE_UPLOADING = 'image_uploading'

# The request property that asks for (or against) the memory state.
MEMORY_REQUEST_PROPERTY = 'vmsnap_memory'

MIB = 1024 * 1024

TaskStateCallback = Callable[..., None]
# (bytes uploaded so far, bytes the snapshot is expected to upload).
ProgressCallback = Callable[[int, int], None]


def no_task_state(task_state: str, expected_state: Optional[str] = None):
    pass


class SnapshotEngine:
    """Takes snapshots of one host's guests.

    :param options: the snapshot options group (``[libvirt]`` or
        ``[vmsnap]``).
    :param state_path: where the journal records what each snapshot
        changes, for recovery after a crash.
    """

    def __init__(self, host: host_mod.Host, options: Any,
                 state_path: str) -> None:
        self._host = host
        self._options = options
        self._state_path = state_path

    def take(self, instance: Any, image_id: str,
             update_task_state: TaskStateCallback, images: Any,
             progress: Optional[ProgressCallback] = None) -> None:
        """Capture the instance's disks into ``image_id`` (and new images).

        :param images: what talks to Glance: ``check_queued``, ``create``,
            ``delete``, ``upload``, ``set_properties``.
        :param progress: told the bytes uploaded as they go, against the
            most the snapshot can upload (its disks' data and memory).
        """
        guest = self._host.get_guest(instance.uuid)
        image = images.check_queued(image_id)
        with _SentAhead(images, image) as ahead:
            ahead.send(domain_record.properties(guest.inactive_xml()))
            self._take(instance, guest, ahead, update_task_state, images,
                       progress)

    def _take(self, instance: Any, guest: guest_mod.Guest,
              ahead: '_SentAhead', update_task_state: TaskStateCallback,
              images: Any, progress: Optional[ProgressCallback]) -> None:
        plan = self._plan(instance, guest, ahead.sent, images)
        image_id = plan.image['id']
        images = _Counted(images, plan.upload_bytes(), progress)
        record = journal.begin(self._state_path, KIND, instance.uuid,
                               images=[image_id])
        try:
            group = _ImageGroup(images, ahead, plan.disks, instance.uuid,
                                memory=plan.memory, record=record)
            try:
                update_task_state(task_state=IMAGE_PENDING_UPLOAD)
                with workspace.workspace(self._options.snapshots_directory,
                                         plan.space_needed()) as workdir:
                    record.update(workdir=workdir)
                    digests = self._capture_and_upload(
                        instance, plan, group, workdir, update_task_state,
                        images, record)
                snapshot_chains.commit(plan.guest, images, self._state_path,
                                       plan.link, image_id, plan.disks[0],
                                       plan.chains[0][0].virtual_size,
                                       digests.blocks, record)
            except BaseException:
                group.delete_created()
                snapshot_chains.abandon(plan.guest, plan.link, record)
                raise
        finally:
            _end(record)
        LOG.info('Snapshot image %(image)s is active%(others)s: '
                 '%(summary)s', {'image': image_id,
                                 'others': group.describe_others(),
                                 'summary': images.summary()},
                 instance_uuid=instance.uuid)

    def _plan(self, instance: Any, guest: guest_mod.Guest, image: dict,
              images: Any) -> '_Plan':
        """Everything decided before the guest is touched; fails early."""
        libvirt_conf = self._options
        state = guest.state()
        memory = (_memory_requested(image, libvirt_conf)
                  and state in guest_mod.ACTIVE_STATES)
        # A memory state resumes over every disk the guest writes: all of
        # them are captured at its instant, or a revert would mix times.
        if memory:
            _check_memory_disks(guest)
        disks = (guest.writable_file_disks()
                 if libvirt_conf.snapshot_disks == 'all' or memory
                 else [guest.root_disk()])
        caps = self._host.capabilities(guest.virt_type())
        decision = decide.choose(
            libvirt_conf.snapshot_mode, caps, state, disks, instance.uuid,
            backup=libvirt_conf.use_backup_api and caps.backup,
            memory=memory)
        freezer = quiesce.Freezer(
            guest, quiesce.plan(libvirt_conf.quiesce, instance, guest,
                                state, decision.mode, memory=memory),
            libvirt_conf.quiesce_timeout)
        strategy = capture.get(
            decision.mode, libvirt_conf, caps,
            memory_bytes=guest.hardware()[1] * MIB if memory else 0)
        compress = (libvirt_conf.snapshot_compression_type
                    if libvirt_conf.snapshot_compression
                    and libvirt_conf.snapshot_image_format == 'qcow2'
                    else '')
        # -U: a running QEMU holds the disks open.
        chains = [qemu_img.info(d.path, d.format, force_share=True)
                  for d in disks]
        link = snapshot_chains.plan(
            guest, images, self._state_path, libvirt_conf, image, disks,
            chains[0][0].virtual_size, strategy.method,
            libvirt_conf.snapshot_image_format, memory)
        if link.checkpoint:
            strategy.checkpoint = capture_base.Checkpoint(
                link.checkpoint, link.incremental_from)
        LOG.info('Taking a %(mode)s snapshot (%(method)s) of %(disks)s%(mem)s '
                 'into image %(image)s: %(reason)s%(chain)s',
                 {'mode': decision.mode, 'method': strategy.method,
                  'mem': ' and memory' if memory else '',
                  'disks': ', '.join(d.target for d in disks),
                  'image': image['id'], 'reason': decision.reason,
                  'chain': '; ' + link.reason if link.requested else ''},
                 instance_uuid=instance.uuid)
        return _Plan(
            guest=guest, image=image, disks=disks, caps=caps,
            decision=decision, freezer=freezer, strategy=strategy,
            chains=chains, link=link,
            image_format=libvirt_conf.snapshot_image_format,
            compress=compress, state=state, memory=memory,
            machine=guest.machine() if memory else {},
            streamed=strategy.exports_nbd(state),
            always_plain=libvirt_conf.plain_content_digest == 'always')

    def _capture_and_upload(self, instance: Any, plan: '_Plan',
                            group: '_ImageGroup', workdir: str,
                            update_task_state: TaskStateCallback,
                            images: Any,
                            record: journal.Record) -> digest.Digests:
        """Stream each disk into its image, or flatten then upload it.

        A stream is read while the capture holds the disks still; a file is
        uploaded once the capture has let the guest go.  Returns the boot
        disk's digests.
        """
        fmt = plan.image_format
        flats = []
        found = {}
        root = plan.disks[0]
        described = {disk.target: group.properties(
            disk, plan.described(instance, disk)) for disk in plan.disks}
        group.send_ahead(described[root.target])
        with plan.strategy.capture(
                plan.guest, plan.disks, plan.chains, workdir,
                functools.partial(plan.freezer.frozen, record),
                record) as views:
            if plan.streamed:
                update_task_state(task_state=IMAGE_UPLOADING,
                                  expected_state=IMAGE_PENDING_UPLOAD)
            for disk, view in zip(plan.disks, views):
                properties = dict(
                    described[disk.target],
                    **image_properties.instant_properties(
                        plan.instant(view)))
                if disk is root:
                    properties.update(group.sent_ahead)
                if plan.streamed:
                    found[disk.target] = _upload_export(
                        images, group.image(disk), view, fmt,
                        plan.compress, properties,
                        plan.link if disk is root else None,
                        plan.always_plain)
                else:
                    flat = os.path.join(workdir, '%s.%s' % (disk.target,
                                                            fmt))
                    _flatten(view, flat, fmt, plan.compress)
                    flats.append((disk, flat, properties))
        if flats:
            update_task_state(task_state=IMAGE_UPLOADING,
                              expected_state=IMAGE_PENDING_UPLOAD)
        for disk, flat, properties in flats:
            image = group.image(disk)
            found[disk.target] = digest.of_snapshot_file(
                flat, fmt, plan.always_plain)
            properties.update(found[disk.target].properties())
            with open(flat, 'rb') as data:
                images.upload(image['id'], data, os.path.getsize(flat), fmt,
                              properties, current=image)
        if plan.memory:
            self._upload_memory(plan, group, plan.strategy.memory, images)
        return found[root.target]

    def _upload_memory(self, plan: '_Plan', group: '_ImageGroup',
                       memory: capture_base.MemoryState,
                       images: Any) -> None:
        """The memory state into its hidden image, then link the two."""
        properties = memory_image.machine_properties(plan.machine)
        properties.update({
            'instance_uuid': plan.guest.uuid,
            'vmsnap_libvirt_version': host_mod.version_string(
                plan.caps.libvirt_version),
            'vmsnap_qemu_version': host_mod.version_string(
                plan.caps.hypervisor_version),
            'vmsnap_disks': ','.join(d.target for d in plan.disks),
        })
        root_id = group.image_id(plan.disks[0])
        sha256 = memory_image.upload(
            images, group.memory_image_id, memory, properties, root_id,
            memory_image.seal_key(self._options.memory_seal_key_file))
        images.set_properties(root_id, {
            memory_image.SHA256_PROPERTY: sha256,
            image_properties.PAUSE_PROPERTY: '%.3f' % memory.pause_seconds})
        LOG.info('Memory state (%(size)d bytes) uploaded into hidden image '
                 '%(image)s', {'size': os.path.getsize(memory.path),
                               'image': group.memory_image_id},
                 instance_uuid=plan.guest.uuid)


def _upload_export(images: Any, image: dict, view: capture_base.DiskView,
                   image_format: str, compress: str, properties: dict,
                   link: Optional[snapshot_chains.Link],
                   always_plain: bool = False) -> digest.Digests:
    """Encode the export front to back, straight into Glance.

    Compressed, the export is read again: a sample, then once to size
    every compressed cluster (the digests are computed on that pass), then
    to send.

    The content digests are computed as the data streams, so they are
    known only once the upload is done: they are added to the image then.
    An incremental export is encoded as a delta of what changed, and its
    tree digest is the parent's with the changed blocks re-hashed; an
    image of a chain also gets the tree digest, and so does a mostly
    empty disk instead of the plain one (see :mod:`digest`).

    :param image: the image to fill, as Glance holds it now.
    :param link: the snapshot's place in a chain, for the boot disk.
    :param always_plain: record the plain sha256 whatever it costs.
    """
    chained = link is not None and link.checkpoint is not None
    codec = image_stream.codec(compress)
    with nbd.Client(view.nbd_socket, view.nbd_export,
                    dirty_bitmap=view.dirty_bitmap) as client, \
            contextlib.ExitStack() as cleanup:
        extents = client.extents()
        if view.dirty_bitmap:
            changed = client.dirty()
            encoded = image_stream.qcow2_delta(client.size, extents, changed,
                                               client.read_ahead, codec)
            digests = functools.partial(
                digest.of_delta, client.read_ahead, client.size, extents,
                changed, link.parent_blocks, always_plain)
        else:
            content = digest.for_snapshot(client.read_ahead, client.size,
                                          extents, chained, always_plain)
            # Its hashing thread ends with the upload, whatever happens.
            cleanup.callback(content.close)
            encoded = image_stream.ENCODERS[image_format](
                client.size, extents, content.reads, codec,
                client.read_ahead)
            digests = content.result
        body = image_stream.Prefetcher(encoded.chunks, encoded.size)
        try:
            images.upload(image['id'], body, encoded.size, image_format,
                          properties, current=image)
        finally:
            body.close()
        # Whatever the encoder did not read is read for the digests now,
        # while the export still holds the disk at its instant.
        result = digests()
    images.set_properties(image['id'], result.properties())
    return result


@dataclasses.dataclass
class _Plan:
    """How one snapshot will be taken."""

    guest: Any
    image: dict
    disks: list
    caps: Any
    decision: decide.Decision
    freezer: quiesce.Freezer
    strategy: capture_base.Capture
    # Each disk's backing chain (qemu-img info), top first.
    chains: list
    # Where the snapshot goes in the server's chain of snapshots.
    link: snapshot_chains.Link
    image_format: str
    # The qcow2 compression type, '' for none.
    compress: str
    streamed: bool
    state: str
    memory: bool
    machine: dict
    # plain_content_digest = always: the plain sha256 whatever it costs.
    always_plain: bool

    def upload_bytes(self) -> int:
        """The most this snapshot uploads: its disks' data, its memory."""
        memory = self.guest.hardware()[1] * MIB if self.memory else 0
        return sum(_flat_size(c) for c in self.chains) + memory

    def space_needed(self) -> int:
        flat = 0 if self.streamed else sum(_flat_size(c)
                                           for c in self.chains)
        return self.strategy.scratch_bytes(self.chains) + flat

    def described(self, instance: Any, disk: Any) -> dict:
        """How ``disk``'s image is taken, all but the capture's instant."""
        reason = self.decision.reason
        if self.link.requested:
            reason = '%s; %s' % (self.link.reason, reason)
        properties = image_properties.snapshot_properties(
            instance, image_properties.CapturePlan(
                mode=self.decision.mode, reason=reason,
                method=self.strategy.method, disk=disk,
                libvirt_version=host_mod.version_string(
                    self.caps.libvirt_version),
                qemu_version=host_mod.version_string(
                    self.caps.hypervisor_version),
                disks=tuple(d.target for d in self.disks),
                guest_state=self.state))
        if disk is self.disks[0]:
            properties.update(self.link.properties())
        return properties

    def instant(self, view: capture_base.DiskView
                ) -> image_properties.CaptureInstant:
        """Known once the capture has fixed its instant."""
        return image_properties.CaptureInstant(
            started_at=view.started_at, captured_at=view.captured_at,
            consistency=(image_properties.MEMORY if self.memory
                         else self.freezer.level),
            freeze_seconds=self.freezer.seconds)


class _Counted:
    """Glance, with the bytes each upload reads counted for ``progress``."""

    def __init__(self, images: Any, expected: int,
                 progress: Optional[ProgressCallback]) -> None:
        self._images = images
        self._expected = max(expected, 1)
        self._progress = progress or (lambda _done, _total: None)
        self._started = time.monotonic()
        self.uploaded = 0
        self._progress(0, self._expected)

    def _count(self, n: int) -> None:
        self.uploaded += n
        self._progress(self.uploaded, max(self._expected, self.uploaded))

    def upload(self, image_id: str, data: Any, size: int, *args: Any,
               **kwargs: Any) -> dict:
        return self._images.upload(
            image_id, streams.counting(data, size, self._count), size,
            *args, **kwargs)

    def summary(self) -> str:
        seconds = max(time.monotonic() - self._started, 1e-3)
        return '%.1f MiB uploaded in %.1f s (%.1f MiB/s)' % (
            self.uploaded / MIB, seconds, self.uploaded / MIB / seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._images, name)


class _SentAhead:
    """Patches of the requested image, sent while the snapshot goes on.

    Glance checks each property of a patch on its own (28 ms each here).
    The domain record (a dozen properties) is known as soon as the guest
    is found, and is sent then, beside the plan; how the snapshot is taken
    (another dozen) is known once it is planned, and is sent beside the
    capture.  Neither costs anything on the way to the upload.  The
    patches go one after the other on one thread, and nothing else may
    write the image meanwhile: Glance saves a whole image on each patch,
    so two at once could lose one's changes.  ``image()`` waits for them,
    and so does leaving the ``with`` block, whatever happened there: none
    outlives the snapshot.  A failed snapshot cancels those not started,
    and once one has failed, the next are not sent.  The request's logging
    context goes with them, for the logs of their retries.
    """

    def __init__(self, images: Any, image: dict) -> None:
        self._images = images
        self._context = oslo_context.get_current()
        self.sent = image
        # Everything sent or queued so far.
        self.properties: Dict[str, str] = {}
        self._patches: List[futures.Future] = []
        self._executor: Optional[futures.ThreadPoolExecutor] = None

    def send(self, properties: Dict[str, str]) -> None:
        """Queue a patch of what the image will not hold yet.

        Raises what a patch sent before raised, if it has already: a
        snapshot that cannot write its image stops before it touches the
        guest.
        """
        for patch in self._patches:
            if patch.done() and patch.exception():
                raise patch.exception()
        changed = glance.unheld(properties, dict(self.sent, **self.properties))
        self.properties.update(properties)
        if not changed:
            return
        if self._executor is None:
            self._executor = futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix='send-ahead')
        self._patches.append(self._executor.submit(
            self._send, changed, list(self._patches)))

    def _send(self, changed: Dict[str, str],
              before: List[futures.Future]) -> None:
        # One thread sends them in turn: those before are done.
        if any(patch.exception() for patch in before):
            return
        if self._context is not None:
            self._context.update_store()
        self._images.set_properties(self.sent['id'], changed)

    def image(self) -> dict:
        """The image as Glance holds it once every patch is done."""
        for patch in self._patches:
            patch.result()
        self.sent = dict(self.sent, **self.properties)
        return self.sent

    def __enter__(self) -> '_SentAhead':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._executor is None:
            return
        # The image of a failed snapshot is deleted next: what has not
        # started is not worth Glance's time.
        self._executor.shutdown(wait=True,
                                cancel_futures=exc_info[0] is not None)
        for patch in self._patches:
            if (not patch.cancelled() and patch.exception()
                    and patch.exception() is not exc_info[1]):
                LOG.debug('A patch of image %(id)s sent ahead failed too: '
                          '%(error)s', {'id': self.sent['id'],
                                        'error': patch.exception()})


class _ImageGroup:
    """The requested image for the boot disk, new ones for the others.

    The images of one snapshot share a group id, each names its disk, and
    the boot disk's image lists the others, so that they can be restored
    together.  Images vmsnap created are deleted again if the snapshot
    fails; the requested one belongs to the caller.
    """

    def __init__(self, images: Any, ahead: '_SentAhead',
                 disks: list, instance_uuid: str,
                 memory: bool = False,
                 record: Optional[journal.Record] = None) -> None:
        self._images = images
        self._record = journal.unrecorded(record)
        # The requested image, for the boot disk.
        self._ahead = ahead
        self._root = disks[0].target
        root_image = ahead.sent
        # Each other disk's image (vmsnap creates them), as Glance answered.
        self._disk_images = {}
        self._created = []
        self._group = str(uuidlib.uuid4()) if len(disks) > 1 else None
        self.memory_image_id = None
        try:
            if memory:
                self.memory_image_id = memory_image.create(
                    images, root_image.get('name'), instance_uuid)['id']
                self._add(self.memory_image_id)
            for disk in disks[1:]:
                created = images.create(
                    '%s (%s)' % (root_image.get('name') or 'snapshot',
                                 disk.target),
                    {'image_type': 'snapshot',
                     'instance_uuid': instance_uuid})
                self._add(created['id'])
                self._disk_images[disk.target] = created
        except Exception:
            self.delete_created()
            raise

    def _add(self, image_id: str) -> None:
        self._created.append(image_id)
        self._record.update(
            images=self._record.facts.get('images', []) + [image_id])

    def image(self, disk: Any) -> dict:
        """The image as Glance holds it; the boot disk's, once sent ahead."""
        if disk.target == self._root:
            return self._ahead.image()
        return self._disk_images[disk.target]

    def image_id(self, disk: Any) -> str:
        if disk.target == self._root:
            return self._ahead.sent['id']
        return self._disk_images[disk.target]['id']

    def send_ahead(self, properties: Dict[str, str]) -> None:
        """Queue ``properties`` for the requested image, before its data."""
        self._ahead.send(properties)

    @property
    def sent_ahead(self) -> Dict[str, str]:
        """What the requested image is sent before its data's own patch."""
        return self._ahead.properties

    def _others(self) -> str:
        """``target=image_id`` of the images vmsnap created."""
        return image_properties.group_value(
            [(target, image['id'])
             for target, image in self._disk_images.items()])

    def describe_others(self) -> str:
        others = self._others()
        if self.memory_image_id:
            others = ','.join(filter(None, [
                others, 'memory=%s' % self.memory_image_id]))
        return ' (other images: %s)' % others if others else ''

    def properties(self, disk: Any, properties: dict) -> dict:
        if self.memory_image_id:
            properties[memory_image.LINK_PROPERTY] = self.memory_image_id
        if self._group:
            properties[image_properties.GROUP_ID_PROPERTY] = self._group
            properties['vmsnap_disk_target'] = disk.target
            if disk.target == self._root:
                properties[image_properties.GROUP_IMAGES_PROPERTY] = (
                    self._others())
        return properties

    def delete_created(self) -> None:
        for image_id in self._created:
            self._images.delete(image_id)
        self._created = []


def _flatten(view: capture_base.DiskView, dest: str, image_format: str,
             compress: str) -> None:
    if view.path:
        qemu_img.convert(view.path, view.format, dest, image_format,
                         compress=compress)
    else:
        qemu_img.convert_nbd(view.nbd_socket, view.nbd_export, dest,
                             image_format, compress=compress)


def _check_memory_disks(guest: guest_mod.Guest) -> None:
    """A memory state needs every disk the guest writes captured with it."""
    others = [d.target for d in guest.disks()
              if not d.readonly and (d.source_type != 'file' or not d.path)]
    if others:
        raise exception.SnapshotUnsupported(
            mode='memory', instance_uuid=guest.uuid,
            reason='disk(s) %s are not files vmsnap can capture at the '
                   'memory\'s instant, and a revert would resume the memory '
                   'over their newer content; snapshot without '
                   'vmsnap_memory' % ', '.join(others))


def _end(record: journal.Record) -> None:
    """Drop the record, unless it says a change is still not undone."""
    left = journal.outstanding(record.facts, capture_base.RECORDED_CHANGES)
    if left:
        LOG.error('The snapshot could not undo %(left)s; its record %(id)s '
                  'is kept: "vmsnap recover" (or the next start) finishes '
                  'the job', {'left': ', '.join(left), 'id': record.id},
                  instance_uuid=record.facts['instance_uuid'])
        return
    record.remove()


def _memory_requested(image: dict, options: Any) -> bool:
    """The request's vmsnap_memory property, else the configuration."""
    asked = image.get(MEMORY_REQUEST_PROPERTY)
    if asked is None:
        return bool(options.snapshot_memory)
    return strutils.bool_from_string(asked)


def _flat_size(chain: list) -> int:
    """Upper bound of the flattened image: the data of every layer."""
    return min(chain[0].virtual_size,
               sum(layer.actual_size for layer in chain))
