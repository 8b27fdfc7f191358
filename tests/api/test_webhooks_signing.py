"""Standard Webhooks signatures, checked against an independent implementation written here."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from api.webhooks.signing import (
    WebhookSignatureError,
    decode_secret,
    generate_secret,
    sign,
    signature_headers,
    verify,
)


def _independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The scheme as the Standard Webhooks spec words it, without using the module under test."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def test_secret_is_whsec_with_32_random_bytes() -> None:
    """Secrets are ``whsec_`` + base64 of 32 bytes, and differ each time."""
    a, b = generate_secret(), generate_secret()
    assert a.startswith("whsec_") and a != b
    assert len(decode_secret(a)) == 32


def test_headers_match_an_independent_implementation() -> None:
    """The three headers carry the id, the timestamp and a v1 HMAC over ``id.timestamp.body``."""
    secret = generate_secret()
    body = b'{"type":"job.succeeded","job_id":"job_x","seq":9}'
    headers = signature_headers(secret, "whd_01", 1_700_000_000, body)
    assert headers["webhook-id"] == "whd_01"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == _independent_signature(secret, "whd_01", "1700000000", body)


def test_verify_accepts_its_own_and_rejects_tampering() -> None:
    """A signed message verifies; a changed body, an old timestamp or another key do not."""
    secret = generate_secret()
    body = b'{"a":1}'
    headers = signature_headers(secret, "msg_1", 1_700_000_000, body)
    verify(secret, headers, body, now=1_700_000_010)
    with pytest.raises(WebhookSignatureError):
        verify(secret, headers, b'{"a":2}', now=1_700_000_010)
    with pytest.raises(WebhookSignatureError):
        verify(secret, headers, body, now=1_700_000_000 + 3600)
    with pytest.raises(WebhookSignatureError):
        verify(generate_secret(), headers, body, now=1_700_000_010)


def test_verify_accepts_any_of_several_signatures() -> None:
    """During key rotation several space-separated signatures are sent; one valid is enough."""
    old, new = generate_secret(), generate_secret()
    body = b"{}"
    both = f"{sign(old, 'm', 5, body)} {sign(new, 'm', 5, body)}"
    verify(new, {"webhook-id": "m", "webhook-timestamp": "5", "webhook-signature": both}, body, now=5)


def test_malformed_secret_is_refused() -> None:
    """A secret without the prefix or with broken base64 is an error, not a silent empty key."""
    with pytest.raises(WebhookSignatureError):
        decode_secret("abc")
    with pytest.raises(WebhookSignatureError):
        decode_secret("whsec_***")
