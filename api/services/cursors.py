"""Opaque pagination cursors: the last row's id, base64url-encoded so clients do not parse it."""

from __future__ import annotations

import base64
import binascii

from api.errors import ValidationProblem
from api.ids import is_valid_id


def encode_cursor(last_id: str | None) -> str | None:
    """The cursor that continues after the row ``last_id`` (None: no next page)."""
    if last_id is None:
        return None
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, prefix: str) -> str | None:
    """The row id inside a cursor made by ``encode_cursor``; 422 ``invalid_cursor`` when it is not one."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        value = ""
    if not is_valid_id(value, prefix):
        raise ValidationProblem(
            "the cursor is not one this API returned", code="invalid_cursor", pointer="/query/after"
        )
    return value
