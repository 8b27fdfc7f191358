"""Opaque, prefixed, time-ordered ids: ``ds_01j9z3k8m2v6f4q7r1s5t0w3xy``.

The part after the prefix is a ULID in lower-case Crockford base32 (48 bits of milliseconds,
80 random bits, 26 characters), so ids sort roughly by creation time and cursor pagination by
id is stable. Clients must treat ids as opaque strings.
"""

from __future__ import annotations

import random
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


def _ulid(prefix: Prefix | str, ms: int, random_bits: int) -> str:
    value = ((ms & ((1 << 48) - 1)) << 80) | random_bits
    return f"{prefix}_{_encode(value, _BODY_LEN)}"


def new_id(prefix: Prefix | str, *, now_ms: int | None = None) -> str:
    """A fresh id with ``prefix`` (e.g. ``new_id(Prefix.DATASET)``)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _ulid(prefix, ms, secrets.randbits(80))


def new_request_id() -> str:
    """A fresh ``req_`` id for a request that brought none, from the ``random`` module's generator.

    A request id only has to be unique, not unguessable, and ``secrets`` reads ``os.urandom``: a
    system call that releases the GIL, so on the event loop, once per request, it would hand the
    interpreter to a busy worker thread and wait to get it back. ``random`` reseeds after a fork.
    """
    return _ulid(Prefix.REQUEST, int(time.time() * 1000), random.getrandbits(80))


def is_valid_id(value: str, prefix: Prefix | str) -> bool:
    """True when ``value`` has the shape of an id with ``prefix`` (it may still not exist)."""
    match = _ID_RE.match(value)
    return match is not None and match.group(1) == str(prefix)
