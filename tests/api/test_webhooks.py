"""Webhook endpoints over HTTP, fan-out of events into deliveries, and signed delivery with retries.

Deliveries go to a real HTTP server this test runs on loopback (with the allow-private setting on);
signatures are checked with an independent Standard Webhooks implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.db.models import OutboxMessage, WebhookDelivery
from api.db.repositories import WebhookRepository
from api.db.types import utcnow
from api.schemas.webhooks import WebhookEndpointCreate
from api.services.webhooks import create_endpoint
from api.webhooks.delivery import BACKOFF_SCHEDULE, MAX_ATTEMPTS, deliver_due, deliver_one
from tests.api.conftest import ApiEnv, Tenant
from tests.api.jobs_support import new_job, seed, worker_finish, worker_progress, worker_start

PUBLIC_URL = "https://93.184.215.14/hooks/hyperforge"  # a public address literal: no DNS needed


# -- a receiver on loopback -------------------------------------------------------------------------


@dataclass
class Receiver:
    """A loopback HTTP server answering with the given statuses in turn and recording each request."""

    statuses: list[int]
    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    """Start the receiver; its ``statuses`` can be changed by the test before each delivery."""
    state = Receiver(statuses=[200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if len(state.statuses) > 1 else state.statuses[0]
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def independent_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written from the spec, not with the module under test."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        sig.split(",", 1)[1] == expected
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


@pytest.fixture()
def private_env(api_env: ApiEnv) -> Iterator[ApiEnv]:
    """The same database and store, served by an app with ``webhook_allow_private`` on."""
    settings = api_env.settings.model_copy(update={"webhook_allow_private": True})
    app = create_app(settings, database=api_env.database, store=api_env.store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield ApiEnv("postgres-private", client, api_env.database, api_env.store, settings, api_env.tenants)


def _endpoint(env: ApiEnv, tenant: Tenant, url: str, types: list[str]) -> dict[str, Any]:
    response = env.client.post(
        "/v1/webhook-endpoints", json={"url": url, "event_types": types}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- endpoints --------------------------------------------------------------------------------------


def test_create_list_get_delete(any_env: ApiEnv) -> None:
    """The secret appears only in the create response; delete hides the endpoint (404 afterwards)."""
    tenant = any_env.tenant()
    created = _endpoint(any_env, tenant, PUBLIC_URL, ["job.succeeded", "job.failed", "job.succeeded"])
    assert created["secret"].startswith("whsec_") and created["id"].startswith("whe_")
    assert created["event_types"] == ["job.succeeded", "job.failed"]
    listed = any_env.client.get("/v1/webhook-endpoints", headers=tenant.headers).json()
    assert [e["id"] for e in listed["data"]] == [created["id"]] and "secret" not in listed["data"][0]
    fetched = any_env.client.get(f"/v1/webhook-endpoints/{created['id']}", headers=tenant.headers).json()
    assert fetched == {k: v for k, v in created.items() if k != "secret"}
    assert (
        any_env.client.delete(f"/v1/webhook-endpoints/{created['id']}", headers=tenant.headers).status_code
        == 204
    )
    assert (
        any_env.client.get(f"/v1/webhook-endpoints/{created['id']}", headers=tenant.headers).status_code
        == 404
    )
    assert any_env.client.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"] == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
        "file:///etc/passwd",
        "http://example.com/a b",
    ],
)
def test_ssrf_targets_are_refused_on_create(api_env: ApiEnv, url: str) -> None:
    """Loopback, private, link-local (cloud metadata), names resolving to loopback, other schemes: 422."""
    tenant = api_env.tenant()
    response = api_env.client.post(
        "/v1/webhook-endpoints", json={"url": url, "event_types": ["job.succeeded"]}, headers=tenant.headers
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "webhook_url_forbidden" and problem["errors"][0]["pointer"] == "/url"


@pytest.mark.parametrize(
    "body", [{"url": PUBLIC_URL, "event_types": []}, {"url": PUBLIC_URL, "event_types": ["job.nope"]},
             {"url": PUBLIC_URL}, {"url": PUBLIC_URL, "event_types": ["job.failed"], "secret": "mine"}],
)  # fmt: skip
def test_bad_endpoint_bodies_are_422(api_env: ApiEnv, body: dict[str, Any]) -> None:
    """Event types must be known and non-empty; unknown fields are refused."""
    tenant = api_env.tenant()
    assert api_env.client.post("/v1/webhook-endpoints", json=body, headers=tenant.headers).status_code == 422


# -- fan-out ----------------------------------------------------------------------------------------


def test_events_fan_out_to_subscribed_endpoints_only(api_env: ApiEnv) -> None:
    """append_event makes one pending delivery per subscribed endpoint, and a webhook.deliver outbox row."""
    s = seed(api_env)
    wants_queued = _endpoint(api_env, s.tenant, PUBLIC_URL, ["job.queued", "job.succeeded"])
    wants_final = _endpoint(api_env, s.tenant, PUBLIC_URL, ["job.succeeded"])
    _endpoint(api_env, api_env.tenant("other"), PUBLIC_URL, ["job.queued"])  # another tenant's endpoint
    job_id = new_job(api_env, s)
    attempt = worker_start(api_env, job_id, s.tenant.id)
    worker_progress(api_env, job_id, s.tenant.id, attempt, 10)
    worker_finish(api_env, job_id, s.tenant.id, attempt, "succeeded")
    with api_env.session() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all()
        by_endpoint: dict[str, int] = {}
        for row in rows:
            by_endpoint[row.endpoint_id] = by_endpoint.get(row.endpoint_id, 0) + 1
            assert row.status == "pending" and row.attempt == 0
        assert by_endpoint == {wants_queued["id"]: 2, wants_final["id"]: 1}
        kicks = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "webhook.deliver")).all()
        assert len(kicks) == 2  # job.queued and job.succeeded had subscribers; job.started/progress none
    log = api_env.client.get(
        f"/v1/webhook-endpoints/{wants_queued['id']}/deliveries", headers=s.tenant.headers
    )
    assert log.status_code == 200 and len(log.json()["data"]) == 2


# -- delivery ---------------------------------------------------------------------------------------


def _one_delivery(
    env: ApiEnv, url: str, types: list[str] | None = None
) -> tuple[str, str, str, dict[str, Any]]:
    """A job whose job.queued event has one pending delivery to ``url``: (delivery id, secret, job, ctx)."""
    s = seed(env)
    endpoint = _endpoint(env, s.tenant, url, types or ["job.queued"])
    job_id = new_job(env, s)
    with env.session() as session:
        page = WebhookRepository(session).list_deliveries(endpoint["id"])
    assert len(page.items) == 1
    return page.items[0].id, endpoint["secret"], job_id, {"tenant": s.tenant, "endpoint": endpoint}


def test_delivery_is_signed_and_retried_with_backoff(private_env: ApiEnv, receiver: Receiver) -> None:
    """A 500 schedules a retry 5 s later with the attempt recorded; the retry succeeds with the same id."""
    delivery_id, secret, job_id, ctx = _one_delivery(private_env, receiver.url)
    receiver.statuses = [500, 200]
    now = utcnow()
    first = deliver_one(private_env.database.session, delivery_id, settings=private_env.settings, now=now)
    assert first is not None
    assert (first.attempt, first.status, first.response_status, first.error) == (
        1,
        "pending",
        500,
        "HTTP 500",
    )
    assert first.next_attempt_at == now + BACKOFF_SCHEDULE[0]
    # Not due yet: nothing is sent.
    assert (
        deliver_one(private_env.database.session, delivery_id, settings=private_env.settings, now=now) is None
    )
    assert len(receiver.requests) == 1
    second = deliver_one(
        private_env.database.session,
        delivery_id,
        settings=private_env.settings,
        now=now + timedelta(seconds=5),
    )
    assert second is not None and (second.attempt, second.status, second.response_status) == (
        2,
        "succeeded",
        200,
    )
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert headers["webhook-id"] == delivery_id
        assert independent_verify(secret, headers, body)
        assert headers["content-type"] == "application/json"
        payload = json.loads(body)
        assert payload == {
            "type": "job.queued",
            "job_id": job_id,
            "seq": 1,
            "status": "queued",
            "progress": {"step": 0, "total_steps": 200},
            "links": {
                "job": f"/v1/jobs/{job_id}",
                "events": f"/v1/jobs/{job_id}/events",
                "artifacts": f"/v1/jobs/{job_id}/artifacts",
            },
        }
    log = private_env.client.get(
        f"/v1/webhook-endpoints/{ctx['endpoint']['id']}/deliveries", headers=ctx["tenant"].headers
    ).json()["data"]
    assert [(d["id"], d["status"], d["attempt"], d["response_status"]) for d in log] == [
        (delivery_id, "succeeded", 2, 200)
    ]
    assert log[0]["delivered_at"] is not None and log[0]["next_attempt_at"] is None


def test_backoff_covers_more_than_a_day_then_gives_up(private_env: ApiEnv, receiver: Receiver) -> None:
    """Every attempt failing: retries follow the schedule (over 24 h in all) and the delivery ends failed."""
    assert sum(BACKOFF_SCHEDULE, timedelta()) > timedelta(days=1)
    delivery_id, _, _, _ = _one_delivery(private_env, receiver.url)
    receiver.statuses = [503]
    now = utcnow()
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcome = deliver_one(
            private_env.database.session, delivery_id, settings=private_env.settings, now=now
        )
        assert outcome is not None
        outcomes.append(outcome)
        if outcome.next_attempt_at is not None:
            assert outcome.next_attempt_at - now == BACKOFF_SCHEDULE[outcome.attempt - 1]
            now = outcome.next_attempt_at
    assert [o.status for o in outcomes] == ["pending"] * (MAX_ATTEMPTS - 1) + ["failed"]
    assert len(receiver.requests) == MAX_ATTEMPTS
    assert (
        deliver_one(private_env.database.session, delivery_id, settings=private_env.settings, now=now) is None
    )


def test_redirects_are_not_followed(private_env: ApiEnv, receiver: Receiver) -> None:
    """A 302 (here towards the metadata address) is a failed attempt, not a second request."""
    delivery_id, _, _, _ = _one_delivery(private_env, receiver.url)
    receiver.statuses = [302]
    outcome = deliver_one(private_env.database.session, delivery_id, settings=private_env.settings)
    assert outcome is not None and outcome.status == "pending" and outcome.response_status == 302
    assert len(receiver.requests) == 1


def test_connection_refused_is_recorded(private_env: ApiEnv) -> None:
    """No server listening: the attempt records the error and schedules a retry."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delivery_id, _, _, _ = _one_delivery(private_env, f"http://127.0.0.1:{port}/hook")
    outcome = deliver_one(private_env.database.session, delivery_id, settings=private_env.settings)
    assert outcome is not None and outcome.status == "pending"
    assert outcome.response_status is None and "ConnectError" in (outcome.error or "")


def test_rebinding_to_loopback_is_refused_at_delivery(api_env: ApiEnv, receiver: Receiver) -> None:
    """Created while its name resolved publicly, refused once it resolves to loopback: nothing is sent."""
    s = seed(api_env)
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    with api_env.session() as session:
        endpoint = create_endpoint(
            session,
            s.tenant.id,
            WebhookEndpointCreate(url=f"http://rebind.test:{port}/hook", event_types=["job.queued"]),
            allow_private=False,
            resolver=lambda host, p: ["93.184.215.14"],
        )
    new_job(api_env, s)
    with api_env.session() as session:
        delivery_id = WebhookRepository(session).list_deliveries(endpoint.id).items[0].id
    outcome = deliver_one(
        api_env.database.session,
        delivery_id,
        settings=api_env.settings,
        resolver=lambda host, p: ["127.0.0.1"],
    )
    assert outcome is not None and outcome.status == "pending"
    assert (outcome.error or "").startswith("refused:") and "loopback" in (outcome.error or "")
    assert receiver.requests == []


def test_deleted_endpoint_fails_its_pending_deliveries(private_env: ApiEnv, receiver: Receiver) -> None:
    """After DELETE, the next attempt sends nothing and marks the delivery failed."""
    delivery_id, _, _, ctx = _one_delivery(private_env, receiver.url)
    private_env.client.delete(f"/v1/webhook-endpoints/{ctx['endpoint']['id']}", headers=ctx["tenant"].headers)
    outcome = deliver_one(private_env.database.session, delivery_id, settings=private_env.settings)
    assert outcome is not None and outcome.status == "failed" and outcome.error == "the endpoint was deleted"
    assert receiver.requests == []


def test_deliver_due_sweeps_every_due_delivery_once(private_env: ApiEnv, receiver: Receiver) -> None:
    """The periodic sweep sends each due delivery once; a second sweep finds nothing due."""
    ids = {_one_delivery(private_env, receiver.url)[0] for _ in range(3)}
    outcomes = deliver_due(private_env.database.session, settings=private_env.settings)
    assert {o.delivery_id for o in outcomes} == ids and all(o.status == "succeeded" for o in outcomes)
    assert deliver_due(private_env.database.session, settings=private_env.settings) == []
    assert sorted(h["webhook-id"] for h, _ in receiver.requests) == sorted(ids)
