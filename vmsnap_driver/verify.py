"""Check a snapshot image against the record it carries.

Three independent checks, each naming what it found: the bytes Glance
serves are the bytes it stored (its own ``os_hash_value``), the image is a
sound qcow2 (``qemu-img check``), and its virtual disk's content has the
sha256 vmsnap recorded when it took the snapshot.
"""

import dataclasses
import hashlib
import os
import sys
import tempfile
import time
from typing import Callable, List, Optional

from oslo_concurrency import processutils

from vmsnap_driver import digest
from vmsnap_driver import glance
from vmsnap_driver import nbd
from vmsnap_driver import qemu_nbd

DIGEST_PROPERTY = 'vmsnap_content_sha256'


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class Verdict:
    image_id: str
    checks: List[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


class Progress:
    """A one-line progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._shown = 0.0
        self._started = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown < (0.2 if self._tty else 10):
            return
        self._shown = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0)
        rate = self.done / max(now - self._started, 1e-6) / 2 ** 20
        bar = '#' * int(fraction * 30)
        line = ('downloading [%-30s] %3d%% %8.1f MiB %6.1f MiB/s'
                % (bar, fraction * 100, self.done / 2 ** 20, rate))
        self._stream.write(('\r' + line) if self._tty else line + '\n')
        self._stream.flush()

    def finish(self) -> None:
        self._draw(time.monotonic())
        if self._tty:
            self._stream.write('\n')


def _download(images: glance.ImageService, image: dict, dest: str,
              progress: Callable[[int], None]) -> str:
    algorithm = image.get('os_hash_algo') or 'sha512'
    served = hashlib.new(algorithm)
    with open(dest, 'wb') as f:
        for chunk in images.data(image['id']):
            served.update(chunk)
            f.write(chunk)
            progress(len(chunk))
    return served.hexdigest()


def verify(images: glance.ImageService, image_id: str,
           workdir: Optional[str] = None,
           show_progress: bool = True) -> Verdict:
    image = images.get(image_id)
    checks = []
    expected = image.get(DIGEST_PROPERTY)
    fmt = image.get('disk_format')
    if image.get('status') != 'active':
        return Verdict(image_id, [Check('status', False, 'image is "%s", '
                                        'not active' % image.get('status'))])
    directory = tempfile.mkdtemp(prefix='vmsnap-verify-', dir=workdir)
    path = os.path.join(directory, 'image')
    try:
        progress = Progress(image.get('size') or 0)
        served = _download(images, image, path,
                           progress.update if show_progress
                           else lambda _n: None)
        if show_progress:
            progress.finish()
        stored = image.get('os_hash_value')
        checks.append(Check(
            'glance hash', stored is None or served == stored,
            'the bytes served match the %s Glance recorded at upload'
            % image.get('os_hash_algo') if served == stored else
            'the bytes served do not match the hash Glance recorded at '
            'upload: the stored image was altered'))
        if fmt == 'qcow2':
            try:
                processutils.execute('qemu-img', 'check', '-f', 'qcow2', path)
                checks.append(Check('qemu-img check', True,
                                    'no errors in the qcow2 structure'))
            except processutils.ProcessExecutionError as e:
                checks.append(Check('qemu-img check', False,
                                    (e.stdout or e.stderr or '').strip()))
        if fmt not in ('qcow2', 'raw'):
            checks.append(Check('content sha256', False,
                                'cannot read disk_format %r' % fmt))
        elif not expected:
            checks.append(Check('content sha256', False,
                                'the image has no %s property: it was not '
                                'taken by vmsnap' % DIGEST_PROPERTY))
        else:
            with qemu_nbd.serve(path, fmt) as sock:
                with nbd.Client(sock, qemu_nbd.EXPORT) as client:
                    actual = digest.of_export(client)
            checks.append(Check(
                'content sha256', actual == expected,
                'the virtual disk content matches the snapshot record (%s)'
                % expected if actual == expected else
                'content sha256 is %s, the snapshot record says %s'
                % (actual, expected)))
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(directory)
    return Verdict(image_id, checks)
