"""Compute API microversions: what a request asks for, what it gets."""

from typing import Tuple

MIN_VERSION = (2, 1)
# 2.45: createImage answers with the image id in its body.
# 2.47: servers embed their flavor, so clients need no flavor API.
MAX_VERSION = (2, 47)

HEADER = 'OpenStack-API-Version'
LEGACY_HEADER = 'X-OpenStack-Nova-API-Version'
SERVICE = 'compute'


class NotAcceptable(ValueError):
    """The requested microversion is outside what this service serves."""


def to_str(version: Tuple[int, int]) -> str:
    return '%d.%d' % version


def _parse(text: str) -> Tuple[int, int]:
    text = text.strip()
    if text == 'latest':
        return MAX_VERSION
    try:
        major, minor = text.split('.')
        version = (int(major), int(minor))
    except ValueError:
        raise NotAcceptable('Invalid microversion %r: expected N.N or '
                            '"latest".' % text)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotAcceptable(
            'Version %s is not supported by the API. Minimum is %s and '
            'maximum is %s.' % (text, to_str(MIN_VERSION),
                                to_str(MAX_VERSION)))
    return version


def negotiate(headers) -> Tuple[int, int]:
    """The version a request asked for (2.1 when it asked for none)."""
    value = headers.get(HEADER)
    if value:
        for part in value.split(','):
            words = part.split()
            if len(words) == 2 and words[0].lower() == SERVICE:
                return _parse(words[1])
    legacy = headers.get(LEGACY_HEADER)
    if legacy:
        return _parse(legacy)
    return MIN_VERSION


def response_headers(version: Tuple[int, int]) -> dict:
    return {
        HEADER: '%s %s' % (SERVICE, to_str(version)),
        LEGACY_HEADER: to_str(version),
        'Vary': '%s, %s' % (HEADER, LEGACY_HEADER),
    }


def version_document(base_url: str) -> dict:
    return {
        'id': 'v2.1',
        'status': 'CURRENT',
        'version': to_str(MAX_VERSION),
        'min_version': to_str(MIN_VERSION),
        'updated': '2013-07-23T11:33:21Z',
        'links': [{'rel': 'self', 'href': base_url + '/v2.1/'}],
        'media-types': [{
            'base': 'application/json',
            'type': 'application/vnd.openstack.compute+json;version=2.1'}],
    }
