"""The SSRF guard: private, loopback, link-local and similar targets are refused unless allowed."""

from __future__ import annotations

import pytest

from api.webhooks.ssrf import UnsafeWebhookURLError, check_webhook_url


def _public(host: str, port: int) -> list[str]:
    """A resolver answering with a public documentation-free address (example.com's)."""
    return ["93.184.215.14"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
        "http://224.0.0.1/hook",
        "http://localhost:9/hook",
    ],
)
def test_internal_targets_are_refused(url: str) -> None:
    """Literal internal addresses, and names the system resolves to loopback (localhost), are refused."""
    with pytest.raises(UnsafeWebhookURLError) as info:
        check_webhook_url(url, allow_private=False)
    assert info.value.status == 422
    assert info.value.code == "webhook_url_forbidden"
    assert info.value.errors[0]["pointer"] == "/url"


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "http:///nohost", "https://user:pw@example.com/", "http://example.com:99999/"],
)
def test_malformed_urls_are_refused(url: str) -> None:
    """Only http(s) URLs with a host, a valid port and no credentials are accepted."""
    with pytest.raises(UnsafeWebhookURLError):
        check_webhook_url(url, allow_private=False, resolver=_public)


def test_public_address_passes_and_is_pinned() -> None:
    """A public answer passes; the request is dialled at that address with the original Host."""
    checked = check_webhook_url(
        "https://hooks.example.com:8443/in?x=1", allow_private=False, resolver=_public
    )
    assert checked.addresses == ("93.184.215.14",)
    assert str(checked.pinned_request_url()) == "https://93.184.215.14:8443/in?x=1"
    assert checked.host_header() == "hooks.example.com:8443"


def test_one_private_answer_among_public_ones_is_refused() -> None:
    """Every resolved address must pass: a mixed answer could steer the client to the private one."""
    with pytest.raises(UnsafeWebhookURLError):
        check_webhook_url(
            "http://mixed.example/", allow_private=False, resolver=lambda h, p: ["8.8.8.8", "10.0.0.7"]
        )


def test_rebinding_between_create_and_delivery_is_caught_by_the_recheck() -> None:
    """A name that resolved publicly at creation but to loopback later is refused on the re-check."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    resolver = lambda host, port: next(answers)  # noqa: E731 - a DNS server that changes its answer
    check_webhook_url("http://rebind.example/", allow_private=False, resolver=resolver)
    with pytest.raises(UnsafeWebhookURLError):
        check_webhook_url("http://rebind.example/", allow_private=False, resolver=resolver)


def test_unresolvable_host_is_refused() -> None:
    """A name that does not resolve is a 422, not a 500."""
    with pytest.raises(UnsafeWebhookURLError):
        check_webhook_url("http://does-not-exist.invalid/", allow_private=False)


def test_allow_private_setting_opens_loopback_but_not_multicast() -> None:
    """With the setting on (tests, private deployments) loopback is allowed; multicast never is."""
    assert check_webhook_url("http://127.0.0.1:8000/", allow_private=True).addresses == ("127.0.0.1",)
    with pytest.raises(UnsafeWebhookURLError):
        check_webhook_url("http://224.0.0.1/", allow_private=True)
