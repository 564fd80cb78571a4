"""Durable intent records: what an operation is about to change on a guest.

An operation that changes a guest writes here *before* each change, and
says so again once the change is undone or done, so that at any instant the
record on disk is a superset of what is changed.  If the process dies, the
record survives it and :mod:`vmsnap_driver.recovery` finishes or undoes the
operation at the next start.  A record is removed only when it says that
nothing is outstanding.

Records are small JSON files under ``<state_path>/operations``, replaced
atomically (write, fsync, rename, fsync the directory): a crash leaves the
old record or the new one, never half of one.
"""

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Dict, List, Optional
import uuid as uuidlib

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

DIRECTORY = 'operations'


def _directory(state_path: str) -> str:
    path = os.path.join(state_path, DIRECTORY)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, durably and atomically."""
    write_bytes(path, json.dumps(data, sort_keys=True).encode())


def write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably and atomically."""
    write_file(path, lambda f: f.write(data))


def write_file(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Replace ``path`` with what ``write`` writes, durably, atomically.

    The file is whole under its name or not there at all, and is created
    0600 (mkstemp): records and archives are no one else's to read.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


class Record:
    """One operation's record; ``facts`` is what it has changed so far."""

    def __init__(self, path: str, facts: Dict[str, Any]) -> None:
        self.path = path
        self.facts = facts

    @property
    def id(self) -> str:
        return self.facts['id']

    def update(self, **facts: Any) -> None:
        """Record ``facts`` durably before the change they describe."""
        self.facts.update(facts)
        write_json(self.path, self.facts)

    def remove(self) -> None:
        os.unlink(self.path)
        _fsync_directory(os.path.dirname(self.path))


class Unrecorded(Record):
    """A record kept in memory only: for callers with nothing to recover."""

    def __init__(self) -> None:
        super().__init__('', {'id': 'unrecorded'})

    def update(self, **facts: Any) -> None:
        self.facts.update(facts)

    def remove(self) -> None:
        pass


def unrecorded(record: Optional[Record]) -> Record:
    """``record``, or one kept in memory for callers with none."""
    return record if record is not None else Unrecorded()


def outstanding(facts: Dict[str, Any], keys: tuple) -> List[str]:
    """Which of the changes ``keys`` name the record says are not undone."""
    return [key for key in keys if facts.get(key)]


def begin(state_path: str, kind: str, instance_uuid: str,
          **facts: Any) -> Record:
    """Write a new record for an operation about to start."""
    op_id = str(uuidlib.uuid4())
    record = Record(os.path.join(_directory(state_path), op_id + '.json'),
                    {})
    record.update(id=op_id, kind=kind, instance_uuid=instance_uuid,
                  **facts)
    return record


def pending(state_path: str) -> List[Record]:
    """Records left by operations that did not end: a crash, a kill."""
    directory = _directory(state_path)
    records = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith('.tmp-'):
            os.unlink(path)
            continue
        if not name.endswith('.json'):
            continue
        try:
            with open(path) as f:
                records.append(Record(path, json.load(f)))
        except (OSError, ValueError) as e:
            LOG.error('Unreadable operation record %(path)s (%(error)s): '
                      'moved aside; check its guest by hand',
                      {'path': path, 'error': e})
            os.replace(path, path + '.unreadable')
    return records
