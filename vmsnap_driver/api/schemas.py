"""JSON Schemas of the request bodies, validated as Nova validates its own.

jsonschema reports the first error in words Nova's users know
("Additional properties are not allowed ('x' was unexpected)"); the
fault names the field at fault.
"""

from typing import Any

import jsonschema

from vmsnap_driver.api import faults

MAX_NAME = 255
# Nova's default [quota] metadata_items.
MAX_METADATA_ITEMS = 128

# Nova accepts UUIDs with or without their dashes.
UUID_PATTERN = '^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$'
UUID = {'type': 'string', 'format': 'uuid', 'pattern': UUID_PATTERN}
NAME = {'type': 'string', 'minLength': 1, 'maxLength': MAX_NAME,
        'pattern': r'^(?!\s*$).*'}

create_image = {
    'type': 'object',
    'properties': {
        'createImage': {
            'type': 'object',
            'properties': {
                'name': NAME,
                'metadata': {
                    'type': 'object',
                    'patternProperties': {
                        '^.{1,255}$': {'type': 'string', 'maxLength': 255},
                    },
                    'additionalProperties': False,
                },
            },
            'required': ['name'],
            'additionalProperties': False,
        },
    },
    'required': ['createImage'],
    'additionalProperties': False,
}

rebuild = {
    'type': 'object',
    'properties': {
        'rebuild': {
            'type': 'object',
            'properties': {'imageRef': UUID},
            'required': ['imageRef'],
            'additionalProperties': False,
        },
    },
    'required': ['rebuild'],
    'additionalProperties': False,
}


def no_argument(action: str) -> dict:
    """An action whose only argument is null, as Nova's os-stop."""
    return {'type': 'object', 'properties': {action: {'type': 'null'}},
            'required': [action], 'additionalProperties': False}


def validate(schema: dict, body: Any, hint: str = '') -> None:
    """Raise a 400 fault naming the first thing wrong with ``body``."""
    validator = jsonschema.Draft4Validator(
        schema, format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is None:
        return
    field = '/'.join(str(p) for p in error.absolute_path) or 'body'
    raise faults.Fault(400, "Invalid input for field/attribute %s. Value: "
                            "%s. %s%s" % (field, _short(error.instance),
                                          error.message, hint))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'
