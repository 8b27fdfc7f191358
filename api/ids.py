"""Opaque, prefixed, time-ordered ids: ``ds_01j9z3k8m2v6f4q7r1s5t0w3xy``.

The part after the prefix is a ULID in lower-case Crockford base32 (48 bits of milliseconds,
80 random bits, 26 characters), so ids sort roughly by creation time and cursor pagination by
id is stable. Clients must treat ids as opaque strings.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import StrEnum
from typing import Final

_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_BODY_LEN: Final = 26


class Prefix(StrEnum):
    """The prefix of each kind of id."""

    DATASET = "ds"
    JOB = "job"
    ARTIFACT = "art"
    EVENT = "evt"
    WEBHOOK_ENDPOINT = "whe"
    WEBHOOK_DELIVERY = "whd"
    TENANT = "ten"
    API_KEY = "key"
    MODEL = "mdl"
    OUTBOX = "obx"
    REQUEST = "req"


_ID_RE: Final = re.compile(rf"^([a-z]+)_([{_ALPHABET}]{{{_BODY_LEN}}})$")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: Prefix | str, *, now_ms: int | None = None) -> str:
    """A fresh id with ``prefix`` (e.g. ``new_id(Prefix.DATASET)``)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = ((ms & ((1 << 48) - 1)) << 80) | secrets.randbits(80)
    return f"{prefix}_{_encode(value, _BODY_LEN)}"


def is_valid_id(value: str, prefix: Prefix | str) -> bool:
    """True when ``value`` has the shape of an id with ``prefix`` (it may still not exist)."""
    match = _ID_RE.match(value)
    return match is not None and match.group(1) == str(prefix)
