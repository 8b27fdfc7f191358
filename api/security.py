"""API keys and the admin token.

A key is ``hf_live_`` + 40 base62 characters (about 238 random bits). Its first 16 characters are
the non-secret ``prefix`` (stored, indexed, safe to log) used to find the row; only
HMAC-SHA256(pepper, key) is stored, and the candidate's hash is compared in constant time. The
pepper is a server-side secret from settings, so a leaked table alone cannot be used to test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Final

KEY_PREFIX: Final = "hf_live_"
_RANDOM_LEN: Final = 40
LOOKUP_PREFIX_LEN: Final = len(KEY_PREFIX) + 8
_ALPHABET: Final = string.ascii_letters + string.digits
MAX_KEY_LENGTH: Final = 200


@dataclass(frozen=True)
class NewApiKey:
    """A freshly generated key: ``secret`` is shown once, ``prefix`` and ``key_hash`` are stored."""

    secret: str
    prefix: str
    key_hash: str


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as: a tenant, through one of its keys."""

    tenant_id: str
    key_id: str


def hash_key(raw_key: str, pepper: str) -> str:
    """HMAC-SHA256 of the key under the server's pepper, hex."""
    return hmac.new(pepper.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


def generate_api_key(pepper: str) -> NewApiKey:
    """A new random key with its lookup prefix and stored hash."""
    secret = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return NewApiKey(secret=secret, prefix=lookup_prefix(secret), key_hash=hash_key(secret, pepper))


def lookup_prefix(raw_key: str) -> str:
    """The non-secret part of a key used to find its row."""
    return raw_key[:LOOKUP_PREFIX_LEN]


def looks_like_api_key(raw_key: str) -> bool:
    """Cheap shape check before any database work."""
    return (
        raw_key.startswith(KEY_PREFIX)
        and LOOKUP_PREFIX_LEN < len(raw_key) <= MAX_KEY_LENGTH
        and all(c in _ALPHABET for c in raw_key[len(KEY_PREFIX) :])
    )


def hashes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def admin_token_matches(given: str | None, expected: str | None) -> bool:
    """True when an admin token is configured and ``given`` equals it (constant time)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


class PrincipalCache:
    """Verified keys remembered for ``ttl`` seconds, keyed by their hash, to spare a query per request.

    A revoked key keeps working for at most ``ttl`` seconds in the process that cached it;
    ``ttl = 0`` disables the cache.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        """The cached principal for a key hash, if still fresh."""
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key_hash]
                return None
            return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        """Remember a verified key."""
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; a cold cache only costs one query per key
            self._entries[key_hash] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        """Forget everything (after revoking keys in this process)."""
        with self._lock:
            self._entries.clear()
