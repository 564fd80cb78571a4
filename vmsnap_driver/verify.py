"""Check a snapshot image against the record it carries.

Three independent checks, each naming what it found: the bytes Glance
serves are the bytes it stored (its own ``os_hash_value``), the image is a
sound qcow2 (``qemu-img check``), and its virtual disk's content has the
sha256 vmsnap recorded when it took the snapshot.
"""

import dataclasses
import os
import tempfile
from typing import List, Optional

from oslo_concurrency import processutils

from vmsnap_driver import digest
from vmsnap_driver import glance
from vmsnap_driver import progress

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
        bar = progress.Progress(image.get('size') or 0, 'downloading',
                                enabled=show_progress)
        served = glance.download(images, image, path, bar.update)
        bar.finish()
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
            actual = digest.of_file(path, fmt)
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
