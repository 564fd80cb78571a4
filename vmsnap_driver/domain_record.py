"""The guest's domain XML, kept with its snapshot in Glance.

An exported snapshot must bring its guest back after the guest and its host
are gone, and the domain definition at snapshot time is the only full
description of the machine its disks and memory belong to.  Glance has no
place for a document beside an image, and a property holds at most 255
characters: the XML is compressed (zlib: a Nova domain's 5-8 KB becomes
1.5-2.5 KB), base64-encoded and cut into numbered properties on the
snapshot's boot-disk image, with its sha256 to prove it whole when read
back.  Passwords are never in it (libvirt leaves them out unless asked).
"""

import base64
import hashlib
import zlib
from typing import Dict, Optional
from xml.etree import ElementTree

import defusedxml
from defusedxml import ElementTree as defused_etree

from oslo_log import log as logging

from vmsnap_driver import exception

LOG = logging.getLogger(__name__)

PREFIX = 'vmsnap_domain_xml_'
PART_PROPERTY = PREFIX + '%02d'
PARTS_PROPERTY = 'vmsnap_domain_xml_parts'
SHA256_PROPERTY = 'vmsnap_domain_xml_sha256'
# Within Glance's 255 characters per property value.
PART_SIZE = 250
# Glance allows 128 properties per image by default; a snapshot has some
# 40 of its own.  32 parts hold 6 KB of compressed XML, some 25-40 KB of
# domain XML: a large domain.
MAX_PARTS = 32
# What a recorded XML may decompress to: a domain XML is tens of KB.
MAX_XML_BYTES = 4 * 1024 * 1024


def properties(xml: str) -> Dict[str, str]:
    """The properties that hold ``xml``; none when it does not fit."""
    packed = base64.b64encode(zlib.compress(xml.encode(), 9)).decode()
    parts = [packed[i:i + PART_SIZE]
             for i in range(0, len(packed), PART_SIZE)]
    if len(parts) > MAX_PARTS:
        LOG.warning('The domain XML (%d bytes compressed) does not fit in '
                    '%d image properties: the snapshot will not record it, '
                    'and an export of it cannot define the guest',
                    len(packed) * 3 // 4, MAX_PARTS)
        return {}
    found = {PART_PROPERTY % i: part for i, part in enumerate(parts)}
    found[PARTS_PROPERTY] = str(len(parts))
    found[SHA256_PROPERTY] = hashlib.sha256(xml.encode()).hexdigest()
    return found


def read(image: dict) -> Optional[str]:
    """The domain XML ``image`` records; None when it records none.

    Raises ImageCorrupt when the parts do not make the XML recorded.
    """
    if not image.get(PARTS_PROPERTY):
        return None

    def corrupt(reason: str) -> exception.ImageCorrupt:
        return exception.ImageCorrupt(
            image_id=image.get('id'), reason='its recorded domain XML %s'
            % reason)
    try:
        count = int(image[PARTS_PROPERTY])
    except ValueError:
        raise corrupt('has no part count')
    if not 0 < count <= MAX_PARTS:
        raise corrupt('claims %d parts' % count)
    try:
        packed = ''.join(image[PART_PROPERTY % i] for i in range(count))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(packed, validate=True),
                                  MAX_XML_BYTES)
    except KeyError as e:
        raise corrupt('lacks part %s' % e)
    except (ValueError, zlib.error) as e:
        raise corrupt('does not decode: %s' % e)
    if inflater.unconsumed_tail:
        raise corrupt('decompresses to more than %d bytes' % MAX_XML_BYTES)
    if hashlib.sha256(raw).hexdigest() != image.get(SHA256_PROPERTY):
        raise corrupt('does not match its sha256')
    # The image's owner can rewrite every part and the sha256: what is
    # read back is untrusted XML, proven plain before anyone parses it.
    try:
        xml = raw.decode()
        defused_etree.fromstring(xml, forbid_dtd=True)
    except (UnicodeDecodeError, ElementTree.ParseError,
            defusedxml.DefusedXmlException) as e:
        raise corrupt('is not plain XML: %s' % (str(e) or type(e).__name__))
    return xml
