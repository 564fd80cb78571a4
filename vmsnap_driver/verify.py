"""Check a snapshot image against the record it carries.

Independent checks, each naming what it found: the bytes Glance serves are
the bytes it stored (its own ``os_hash_value``); the image is what it claims
and refers to no other file (oslo.utils' format inspector: an image read
back from Glance is untrusted, so this comes before qemu opens it); it is a
sound qcow2 (``qemu-img check``, under resource limits); and its virtual
disk's content has the sha256 vmsnap recorded when it took the snapshot.
A memory image is checked against the sha256 of its uncompressed state; a
delta of a chain is put back on its parents, and the disk they make is
checked.
"""

import dataclasses
import os
import shutil
import tempfile
from typing import List, Optional

from oslo_concurrency import processutils

from vmsnap_driver import chains
from vmsnap_driver import digest
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import image_safety
from vmsnap_driver import memory_image
from vmsnap_driver import progress
from vmsnap_driver import qemu_img


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
    expected, tree = digest.recorded(image)
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
            'Glance recorded no hash' if stored is None else
            'the bytes served match the %s Glance recorded at upload'
            % image.get('os_hash_algo') if served == stored else
            'the bytes served do not match the hash Glance recorded at '
            'upload: the stored image was altered'))
        if image.get(memory_image.OF_PROPERTY):
            checks.append(_memory_check(image, path, directory))
            return Verdict(image_id, checks)
        if fmt in qemu_img.FORMATS:
            # Untrusted: inspected before qemu-img or qemu-nbd open it.
            try:
                image_safety.check(path, fmt, image_id)
            except exception.ImageCorrupt as e:
                checks.append(Check('safety', False, e.kwargs['reason']))
                return Verdict(image_id, checks)
            checks.append(Check('safety', True, 'a plain %s: no backing or '
                                                'data-file reference' % fmt))
        if fmt == 'qcow2':
            try:
                processutils.execute('qemu-img', 'check', '-f', 'qcow2', path,
                                     prlimit=qemu_img.UNTRUSTED_LIMITS)
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
                                'taken by vmsnap' % digest.RECORDED))
        else:
            if chains.is_delta(image):
                path = _rebuild_chain(images, image, directory, checks)
                if path is None:
                    return Verdict(image_id, checks)
            actual = digest.of_file(path, fmt, untrusted=True, tree=tree)
            name = 'content tree' if tree else 'content sha256'
            checks.append(Check(
                name, actual == expected,
                'the virtual disk content matches the snapshot record (%s)'
                % expected if actual == expected else
                '%s is %s, the snapshot record says %s'
                % (name, actual, expected)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return Verdict(image_id, checks)


def _rebuild_chain(images: glance.ImageService, image: dict,
                   directory: str, checks: List[Check]) -> Optional[str]:
    """A delta put back on its parents; the top file, or None."""
    workdir = os.path.join(directory, 'chain')
    os.mkdir(workdir)
    try:
        chain = chains.lineage(images, image)
        path = chains.assemble(images, chain, workdir)
    except (exception.ChainBroken, exception.ImageCorrupt) as e:
        checks.append(Check('chain', False, str(e)))
        return None
    checks.append(Check('chain', True, 'rebuilt from %d images, full one '
                        'first: %s' % (len(chain), ' <- '.join(
                            i['id'] for i in chain))))
    return path


def _memory_check(image: dict, path: str, directory: str) -> Check:
    """A memory image: its uncompressed state against its sha256."""
    def chunks():
        with open(path, 'rb') as f:
            yield from iter(lambda: f.read(memory_image.CHUNK), b'')
    try:
        memory_image.unpack(image, chunks(), os.path.join(directory,
                                                          'memory'),
                            int(image.get('vmsnap_memory_mib') or 0))
    except exception.ImageCorrupt as e:
        return Check('memory sha256', False, e.kwargs['reason'])
    return Check('memory sha256', True, 'the uncompressed memory state '
                 'matches the snapshot record (%s)'
                 % image[memory_image.SHA256_PROPERTY])
