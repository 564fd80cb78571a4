"""The guest's memory state as a Glance image of its own.

Glance has no place for a memory state beside a disk, so it gets an image,
linked both ways to the snapshot's boot-disk image (``vmsnap_memory_image``
there, ``vmsnap_memory_of`` here).  It must never pass for a bootable disk:
Glance 33 inspects only ``bare`` containers and presents a raw/bare upload of
a save file as a bootable raw disk.  So the state is stored zstd-compressed
in the ``compressed`` container, hidden from default listings
(``os_hidden``), and named for what it is.  Compression also pays for
itself: most of a guest's memory is zeros and page cache.  zstandard is the
well-kept binding of the format; it compresses on every core.

The properties carry what a restore must match (machine type, CPU, RAM)
and the sha256 of the uncompressed state, checked before it is used.  QEMU
trusts a migration stream, and the image owner can edit any property: so
the sha256 is sealed with a host secret (an HMAC over the state's sha256,
its image, the snapshot's image and the server), and a state whose seal
this host cannot reproduce is never restored.
"""

import hashlib
import hmac
import os
from typing import Any, Callable, Dict, Optional

import zstandard

from vmsnap_driver.capture import base as capture_base
from vmsnap_driver import exception
from vmsnap_driver import image_properties
from vmsnap_driver import streams

CONTAINER_FORMAT = 'compressed'
DISK_FORMAT = 'raw'
COMPRESSION = 'zstd'
LEVEL = 3
CHUNK = 4 * 1024 * 1024

LINK_PROPERTY = 'vmsnap_memory_image'
OF_PROPERTY = 'vmsnap_memory_of'
SHA256_PROPERTY = 'vmsnap_memory_sha256'
SEAL_PROPERTY = 'vmsnap_memory_seal'
# What a domain must match for the state to resume in it.
FIT_PROPERTIES = {
    'machine_type': 'vmsnap_machine_type',
    'cpu_mode': 'vmsnap_cpu_mode',
    'cpu_model': 'vmsnap_cpu_model',
    'memory_mib': 'vmsnap_memory_mib',
}
FIT_LABELS = {
    'machine_type': 'machine type %s',
    'cpu_mode': 'CPU mode %s',
    'cpu_model': 'CPU model %s',
    'memory_mib': '%s MiB of RAM',
}


def create(images: Any, disk_image_name: str, instance_uuid: str) -> dict:
    """The queued, hidden image the memory state will go into."""
    return images.create('%s (memory)' % (disk_image_name or 'snapshot'), {
        'instance_uuid': instance_uuid,
        'os_hidden': True,
    })


def seal_key(path: str) -> bytes:
    """The host's sealing secret, created on first use.

    Written whole under another name, then linked into place: a reader
    never sees a half-written key, and of two creators one wins.
    """
    if not os.path.exists(path):
        tmp = '%s.%d.tmp' % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(os.urandom(32).hex())
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as f:
        key = f.read().strip()
    if len(key) < 32:
        raise exception.VmsnapException(
            message='The memory seal key in %s is shorter than 32 '
                    'characters: write a long random secret there' % path)
    return key.encode()


def seal(key: bytes, memory_image: dict, disk_image_id: str,
         instance_uuid: str) -> str:
    """HMAC over what a restore trusts.

    The state's sha256, whose state it is, and the machine it resumes in.
    """
    message = '\n'.join(
        [memory_image['id'], disk_image_id, instance_uuid,
         memory_image.get(SHA256_PROPERTY) or '']
        + [memory_image.get(prop) or '' for prop in
           sorted(FIT_PROPERTIES.values())]).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def unsealed(key: bytes, memory_image: dict, disk_image_id: str,
             instance_uuid: str) -> Optional[str]:
    """Why the memory image's seal does not hold, or None."""
    expected = seal(key, memory_image, disk_image_id, instance_uuid)
    if not hmac.compare_digest(expected,
                               memory_image.get(SEAL_PROPERTY) or ''):
        return ('the memory image %s is not sealed by this deployment\'s '
                'vmsnap key (memory_seal_key_file) for this snapshot and '
                'server: it was altered, or taken where another key is '
                'used' % memory_image['id'])
    return None


def machine_properties(machine: Dict[str, str]) -> Dict[str, str]:
    """The guest's machine facts as the memory image records them."""
    return {prop: machine[key] for key, prop in FIT_PROPERTIES.items()}


def misfit(memory_image: dict, machine: Dict[str, str]) -> Optional[str]:
    """Why the state cannot resume in a domain like ``machine``, or None."""
    for key, prop in FIT_PROPERTIES.items():
        recorded = memory_image.get(prop)
        if recorded is None:
            return 'the memory image %s does not record %s' % (
                memory_image['id'], prop)
        if recorded != machine[key]:
            label = FIT_LABELS[key]
            return ('the memory state was saved with %s, the domain now has '
                    '%s' % (label % (recorded or '(none)'),
                            label % (machine[key] or '(none)')))
    return None


def upload(images: Any, image_id: str, memory: capture_base.MemoryState,
           properties: Dict[str, str], disk_image_id: str,
           key: bytes) -> str:
    """Compress the state, upload it into ``image_id``; its sha256.

    The compressed file is written beside the state (in the snapshot's
    workspace) first: Glance is told the size of what it receives.
    """
    compressed = memory.path + '.zst'
    with open(memory.path, 'rb') as source, open(compressed, 'wb') as dest:
        reader = streams.HashingReader(source)
        zstandard.ZstdCompressor(level=LEVEL, threads=-1).copy_stream(
            reader, dest, read_size=CHUNK, write_size=CHUNK)
    sha256 = reader.hash.hexdigest()
    properties = dict(properties, **{
        OF_PROPERTY: disk_image_id,
        SHA256_PROPERTY: sha256,
        image_properties.GUEST_STATE_PROPERTY: memory.state,
        'vmsnap_memory_size': str(os.path.getsize(memory.path)),
        'vmsnap_memory_compression': COMPRESSION,
    })
    properties[SEAL_PROPERTY] = seal(key, dict(properties, id=image_id),
                                     disk_image_id,
                                     properties['instance_uuid'])
    try:
        with open(compressed, 'rb') as data:
            images.upload(image_id, data, os.path.getsize(compressed),
                          DISK_FORMAT, properties,
                          container_format=CONTAINER_FORMAT)
    finally:
        os.unlink(compressed)
    return sha256


# What a saved state holds beyond the guest's RAM: device state, headers.
DEVICE_STATE_MARGIN = 256 * 1024 * 1024


def download(images: Any, image: dict, dest: str, memory_mib: int,
             progress: Callable[[int], None] = lambda _n: None) -> None:
    """Fetch the state from Glance into ``dest``: see :func:`unpack`."""
    unpack(image, images.data(image['id']), dest, memory_mib, progress)


def unpack(image: dict, chunks: Any, dest: Optional[str], memory_mib: int,
           progress: Callable[[int], None] = lambda _n: None) -> None:
    """Decompress the image's bytes (``chunks``) into ``dest``; prove them.

    An image is untrusted: decompression stops past what a guest of
    ``memory_mib`` can have saved, however small the compressed input.
    Raises ImageCorrupt when the bytes are not the ones recorded; ``dest``
    is then removed.  With ``dest`` None the bytes are only proven.
    """
    limit = memory_mib * 1024 * 1024 + DEVICE_STATE_MARGIN
    expected = image.get(SHA256_PROPERTY)
    if (image.get('container_format') != CONTAINER_FORMAT
            or image.get('vmsnap_memory_compression') != COMPRESSION
            or not expected):
        raise exception.ImageCorrupt(
            image_id=image['id'], reason='it is not a vmsnap memory image '
            '(%s container, zstd, with %s)' % (CONTAINER_FORMAT,
                                               SHA256_PROPERTY))

    def corrupt(reason: str) -> exception.ImageCorrupt:
        if dest:
            os.unlink(dest)
        return exception.ImageCorrupt(image_id=image['id'], reason=reason)
    raw = hashlib.sha256()
    try:
        with open(dest or os.devnull, 'wb') as out:
            reader = zstandard.ZstdDecompressor().stream_reader(
                streams.ChunkReader(chunks, progress))
            written = 0
            while True:
                data = reader.read(CHUNK)
                if not data:
                    break
                written += len(data)
                if written > limit:
                    raise corrupt('it decompresses to more than a guest of '
                                  '%d MiB can have saved' % memory_mib)
                raw.update(data)
                out.write(data)
    except zstandard.ZstdError as e:
        raise corrupt('it does not decompress: %s' % e)
    except exception.ImageCorrupt:
        raise
    except Exception:
        if dest:
            os.unlink(dest)
        raise
    if raw.hexdigest() != expected:
        raise corrupt('its sha256 is %s, the snapshot recorded %s'
                      % (raw.hexdigest(), expected))
