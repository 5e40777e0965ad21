"""JSON schemas of request bodies (jsonschema, draft 2020-12)."""

from __future__ import annotations

from typing import Any

import jsonschema

#: Nova's host name limit (services.host is String(255)).
HOST = {"type": ["string", "null"], "minLength": 1, "maxLength": 255,
        "pattern": "^[^\\s]+$"}

CREATE_REDIRECT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "host": HOST,
        "reason": {"type": ["string", "null"], "maxLength": 255},
    },
    "additionalProperties": False,
}


def validate(schema: dict[str, Any], body: Any) -> str | None:
    """The first validation error as a clear sentence, or None."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return "Invalid request body%s: %s" % (
        " at '%s'" % where if where else "", error.message)
