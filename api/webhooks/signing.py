"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A delivery carries three headers: ``webhook-id`` (the message id, stable across retries so
receivers can de-duplicate), ``webhook-timestamp`` (integer Unix seconds) and
``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>`` entries over
``"{id}.{timestamp}.{body}"``). The HMAC key is the secret's base64 payload after ``whsec_``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
SECRET_BYTES = 32  # 256-bit key, as Standard Webhooks recommends (24 to 64 bytes)
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookSignatureError(Exception):
    """A webhook secret is malformed or a signature does not verify."""


def generate_secret() -> str:
    """A fresh ``whsec_<base64>`` secret (shown to the client exactly once)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookSignatureError("a webhook secret starts with 'whsec_'")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise WebhookSignatureError("the webhook secret is not valid base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a received delivery's signature and timestamp; raise ``WebhookSignatureError`` if wrong."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        received = lowered["webhook-signature"]
    except (KeyError, ValueError) as exc:
        raise WebhookSignatureError("missing or malformed webhook headers") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookSignatureError("the webhook timestamp is outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).encode()
    # Several signatures may be sent during a key rotation; any one valid v1 entry suffices.
    for candidate in received.split(" "):
        if candidate.startswith(SIGNATURE_VERSION + ",") and hmac.compare_digest(
            candidate.encode(), expected
        ):
            return
    raise WebhookSignatureError("no webhook signature matches")
