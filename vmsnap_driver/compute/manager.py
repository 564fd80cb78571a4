"""Runs snapshots and rebuilds in the background, as Nova's manager does.

The API answers ``createImage`` and ``rebuild`` at once (202) and the work
runs here, on a bounded pool, one operation per server at a time, with task
states the API shows.  A failed snapshot deletes its image, so a client
polling Glance sees it end instead of waiting forever on a ``queued``
image; any failure leaves a fault on the server.
"""

from concurrent import futures
import dataclasses
import datetime
import threading
from typing import Any, Callable, Dict, Optional

from oslo_log import log as logging

from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import image_properties

LOG = logging.getLogger(__name__)

# Nova's task states for a snapshot, in the order they are set.
IMAGE_SNAPSHOT_PENDING = 'image_snapshot_pending'
IMAGE_SNAPSHOT = 'image_snapshot'
REBUILDING = 'rebuilding'
REBUILD_STATUS = 'REBUILD'
# Nova's task state for each power action, and the driver's method.
POWER_ACTIONS = {
    'stop': ('powering-off', 'power_off'),
    'start': ('powering-on', 'power_on'),
    'pause': ('pausing', 'pause'),
    'unpause': ('unpausing', 'unpause'),
}

# A rough percentage for each step, shown as the server's ``progress``.
PROGRESS = {
    IMAGE_SNAPSHOT_PENDING: 0,
    IMAGE_SNAPSHOT: 10,
    'image_pending_upload': 25,
    'image_uploading': 60,
    REBUILDING: 50,
}


UPLOAD_STATES = ('image_pending_upload', 'image_uploading')


@dataclasses.dataclass
class Instance:
    """What the driver needs to know of a server."""

    uuid: str
    name: str
    image_ref: Optional[str] = None
    system_metadata: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Task:
    state: str
    # The server status when the snapshot was asked for: a cold snapshot
    # stops the guest for a while, but the server is still ACTIVE to its
    # user, as in Nova.
    status: str
    image_id: Optional[str] = None
    # The image was created for this task, and goes if the task fails,
    # through ``images`` (Glance as the requesting user).
    owns_image: bool = True
    images: Any = None
    # Bytes uploaded, and the most the snapshot can upload.
    uploaded: int = 0
    expected: int = 0

    @property
    def progress(self) -> int:
        """Percent: the step's share, then the bytes uploaded.

        The upload (streamed: the read too) is what takes the time: it
        fills 25 to 99; 100 is for the finished image.
        """
        step = PROGRESS.get(self.state, 0)
        if self.state not in UPLOAD_STATES or not self.expected:
            return step
        return min(99, PROGRESS['image_pending_upload']
                   + 74 * self.uploaded // self.expected)


def _utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%SZ')


class ComputeManager:
    """One snapshot per server at a time, at most ``max_concurrent`` runs."""

    def __init__(self, driver: Any, images: glance.ImageService,
                 max_concurrent: int,
                 images_for: Optional[Callable[[Any], Any]] = None) -> None:
        """Run operations through ``driver``.

        :param images_for: Glance for a request's context (the user's
            token); ``images`` (the service's) for every request if None.
        """
        self._driver = driver
        self._images_for = images_for or (lambda _context: images)
        self._executor = futures.ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix='snapshot')
        self._lock = threading.Lock()
        self._tasks: Dict[str, Task] = {}
        self._faults: Dict[str, dict] = {}
        # Servers whose last rebuild failed: ERROR, as Nova shows them,
        # until an operation on them succeeds.
        self._errors: set = set()
        self._queued: Dict[futures.Future, str] = {}
        self._stopping = False

    # -- what the API shows ------------------------------------------
    def task(self, instance_uuid: str) -> Optional[Task]:
        with self._lock:
            task = self._tasks.get(instance_uuid)
            return dataclasses.replace(task) if task else None

    def fault(self, instance_uuid: str) -> Optional[dict]:
        with self._lock:
            return self._faults.get(instance_uuid)

    def record_fault(self, instance_uuid: str, message: str) -> None:
        """A fault found outside a task: what recovery did at start-up."""
        with self._lock:
            self._faults[instance_uuid] = {'code': 500, 'created': _utcnow(),
                                           'message': message}

    def in_error(self, instance_uuid: str) -> bool:
        """The server's last rebuild failed (its guest is as it was)."""
        with self._lock:
            return instance_uuid in self._errors

    # -- createImage ---------------------------------------------------
    def snapshot(self, context: Any, instance: Instance, name: str,
                 metadata: Dict[str, str], status: str) -> str:
        """Create the queued image and start the snapshot; its image id."""
        images = self._images_for(context)
        self._claim(instance.uuid, Task(IMAGE_SNAPSHOT_PENDING, status,
                                        images=images))
        try:
            image_id = images.create(name, image_properties.requested(
                instance, metadata))['id']
        except Exception:
            self._release(instance.uuid)
            raise
        uuid = instance.uuid

        def update_task_state(task_state: str,
                              expected_state: str = IMAGE_SNAPSHOT) -> None:
            with self._lock:
                current = self._tasks[uuid].state
                if expected_state is not None and current != expected_state:
                    raise exception.UnexpectedTaskState(
                        instance_uuid=uuid, actual=current,
                        expected=expected_state)
                self._tasks[uuid].state = task_state

        def progress(uploaded: int, expected: int) -> None:
            with self._lock:
                task = self._tasks[uuid]
                task.uploaded, task.expected = uploaded, expected

        def work() -> None:
            update_task_state(IMAGE_SNAPSHOT,
                              expected_state=IMAGE_SNAPSHOT_PENDING)
            self._driver.snapshot(context, instance, image_id,
                                  update_task_state, progress=progress)
        self._submit(context, uuid, image_id, work,
                     'Snapshot into image %s' % image_id, error_state=False)
        return image_id

    # -- rebuild -------------------------------------------------------
    def rebuild(self, context: Any, instance: Instance,
                image_id: str) -> None:
        """Check, then revert the server to its snapshot in the background.

        Raises RevertRefused at once, touching nothing, for an image that
        is not a snapshot of this server.
        """
        self._claim(instance.uuid, Task(REBUILDING, REBUILD_STATUS,
                                        image_id, owns_image=False))
        try:
            self._driver.check_revert(context, instance, image_id)
        except Exception:
            self._release(instance.uuid)
            raise
        self._submit(context, instance.uuid, image_id,
                     lambda: self._driver.revert(context, instance,
                                                 image_id),
                     'Revert to snapshot %s' % image_id, error_state=True)

    # -- stop, start, pause, unpause ------------------------------------
    def power(self, context: Any, instance: Instance, action: str,
              status: str) -> None:
        """Run a power action in the background, one per server at once."""
        task_state, method = POWER_ACTIONS[action]
        self._claim(instance.uuid, Task(task_state, status,
                                        owns_image=False))
        self._submit(context, instance.uuid, None,
                     lambda: getattr(self._driver, method)(instance),
                     'The %s action' % action, error_state=False)

    # -- running tasks -------------------------------------------------
    def _claim(self, uuid: str, task: Task) -> None:
        with self._lock:
            if self._stopping:
                raise exception.ServiceStopping()
            if uuid in self._tasks:
                raise exception.SnapshotInProgress(
                    instance_uuid=uuid, task_state=self._tasks[uuid].state)
            self._tasks[uuid] = task

    def _release(self, uuid: str) -> None:
        with self._lock:
            del self._tasks[uuid]

    def _submit(self, context: Any, uuid: str, image_id: Optional[str],
                work: Callable[[], None], what: str,
                error_state: bool) -> None:
        """Run ``work`` in the background.

        :param error_state: a failure puts the server in ERROR (a failed
            rebuild, as in Nova; a failed snapshot does not).
        """
        with self._lock:
            self._tasks[uuid].image_id = image_id
            future = self._executor.submit(self._run, context, uuid, work,
                                           what, error_state)
            self._queued[future] = uuid
        future.add_done_callback(self._forget)
        LOG.info('%s queued', what, instance_uuid=uuid)

    def _forget(self, future: futures.Future) -> None:
        with self._lock:
            self._queued.pop(future, None)

    def _run(self, context: Any, uuid: str, work: Callable[[], None],
             what: str, error_state: bool) -> None:
        if context is not None:
            # Log lines from this thread carry the API request's id.
            context.update_store()
        try:
            work()
        except Exception as e:
            if isinstance(e, exception.VmsnapException):
                LOG.error('%(what)s failed: %(error)s',
                          {'what': what, 'error': e}, instance_uuid=uuid)
            else:
                LOG.exception('%s failed unexpectedly', what,
                              instance_uuid=uuid)
            task = self.task(uuid)
            if task.owns_image:
                task.images.delete(task.image_id)
            with self._lock:
                self._faults[uuid] = {
                    'code': 500, 'created': _utcnow(),
                    'message': '%s: %s' % (type(e).__name__, e)}
                if error_state:
                    self._errors.add(uuid)
        else:
            with self._lock:
                self._faults.pop(uuid, None)
                self._errors.discard(uuid)
        finally:
            with self._lock:
                self._tasks.pop(uuid, None)

    # -- shutdown ------------------------------------------------------
    def stop(self, timeout: Optional[float] = None) -> bool:
        """Take no new snapshot, drop queued ones, let running ones end.

        A queued snapshot has touched nothing but its image, which is
        deleted.  A running one is left to finish or fail on its own,
        since either way it restores the guest and cleans up.  Returns
        False when some are still running after ``timeout`` seconds: their
        journal records let the next start undo them.
        """
        with self._lock:
            self._stopping = True
            queued = list(self._queued.items())
        for future, uuid in queued:
            if future.cancel():
                with self._lock:
                    task = self._tasks.pop(uuid, None)
                if task and task.image_id and task.owns_image:
                    LOG.info('Dropping queued snapshot into image %s',
                             task.image_id, instance_uuid=uuid)
                    task.images.delete(task.image_id)
        with self._lock:
            running = [f for f in self._queued if not f.done()]
        if running:
            LOG.info('Waiting up to %s s for %d running operation(s) to end',
                     timeout, len(running))
        _done, left = futures.wait(running, timeout=timeout)
        if left:
            LOG.error('%d operation(s) still running after %s s; stopping '
                      'anyway: the next start undoes them from their '
                      'journal records', len(left), timeout)
            return False
        self._executor.shutdown(wait=True)
        return True
