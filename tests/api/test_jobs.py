"""``/v1/jobs``: create (idempotent, atomic with its outbox row and event), validate, list, get."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from api.db.enums import DatasetStatus
from api.db.models import IdempotencyKey, Job, JobEvent, OutboxMessage
from api.db.repositories import OutboxRepository
from api.services.outbox import drain_outbox
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import Seed, new_job, run_to, seed, spec, submit

JOB_FIELDS = {
    "id", "name", "status", "created_at", "started_at", "finished_at", "dataset_id", "base_model", "spec",
    "resolved_spec", "progress", "attempt", "resumed_from_step", "error", "artifacts_url", "end_user_id",
    "metadata",
}  # fmt: skip


def _count(env: ApiEnv, model: Any, *where: Any) -> int:
    with env.session() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_create_returns_the_contract_job_with_outbox_and_event(any_env: ApiEnv) -> None:
    """202 with exactly the contract's fields; the outbox row and job.queued event exist with it."""
    s = seed(any_env)
    response = submit(any_env, s, end_user_id="user_1", metadata={"order": "A-17"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job) == JOB_FIELDS
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert job["dataset_id"] == s.dataset_id and job["base_model"] == s.model_id
    assert job["progress"] == {
        "step": 0, "total_steps": 200, "loss": None, "learn_rate": None, "samples_per_second": None,
        "eta_seconds": None,
    }  # fmt: skip
    assert job["attempt"] == 0 and job["error"] is None and job["resumed_from_step"] is None
    assert job["artifacts_url"] == f"/v1/jobs/{job['id']}/artifacts"
    assert job["end_user_id"] == "user_1" and job["metadata"] == {"order": "A-17"}
    assert job["spec"]["training"] == {"steps": 200, "learn_rate": "5e-6"}
    assert job["resolved_spec"]["hypernetwork"]["enable_sizes"] == [768, 320, 640, 1280]
    assert "Idempotent-Replayed" not in response.headers
    with any_env.session() as session:
        outbox = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == "job.enqueue")).all()
        assert [m.payload for m in outbox] == [{"job_id": job["id"]}]
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all()
        assert [(e.seq, e.type) for e in events] == [(1, "job.queued")]
    fetched = any_env.client.get(f"/v1/jobs/{job['id']}", headers=s.tenant.headers)
    assert fetched.status_code == 200 and fetched.json() == job


def test_same_key_same_body_replays_the_first_response(api_env: ApiEnv) -> None:
    """A retry with the same key and an equal body (key order aside) replays; one job exists."""
    s = seed(api_env)
    key = str(uuid.uuid4())
    first = submit(api_env, s, key=key)
    reordered = dict(reversed(list(spec(s).items())))
    again = api_env.client.post(
        "/v1/jobs", json=reordered, headers={**s.tenant.headers, "Idempotency-Key": key}
    )
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert _count(api_env, Job, Job.tenant_id == s.tenant.id) == 1
    assert _count(api_env, OutboxMessage) == 1


def test_same_key_different_body_is_422(api_env: ApiEnv) -> None:
    """Reusing a key for another body is refused with ``idempotency_key_reused``; nothing new is written."""
    s = seed(api_env)
    key = str(uuid.uuid4())
    assert submit(api_env, s, key=key).status_code == 202
    response = submit(api_env, s, key=key, name="other")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "idempotency_key_reused"
    assert _count(api_env, Job, Job.tenant_id == s.tenant.id) == 1


def test_keys_are_per_tenant(api_env: ApiEnv) -> None:
    """Two tenants using the same key string each get their own job."""
    a, b = seed(api_env), seed(api_env)
    key = "shared-key"
    ja, jb = submit(api_env, a, key=key), submit(api_env, b, key=key)
    assert ja.status_code == jb.status_code == 202
    assert ja.json()["id"] != jb.json()["id"]
    assert "Idempotent-Replayed" not in jb.headers


@pytest.mark.parametrize(
    ("key", "code"),
    [
        (None, "idempotency_key_required"),
        (" ", "idempotency_key_required"),
        ("x" * 256, "invalid_idempotency_key"),
    ],
)
def test_missing_or_bad_idempotency_key_is_400(api_env: ApiEnv, key: str | None, code: str) -> None:
    """The header is required and must be 1-255 visible ASCII characters."""
    s = seed(api_env)
    headers = dict(s.tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    response = api_env.client.post("/v1/jobs", json=spec(s), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert _count(api_env, Job) == 0


def test_invalid_spec_stores_no_key(api_env: ApiEnv) -> None:
    """A refused spec leaves the key unused, so the client can fix the body and send it with the same key."""
    s = seed(api_env)
    key = str(uuid.uuid4())
    assert submit(api_env, s, key=key, training={"steps": 0}).status_code == 422
    assert _count(api_env, IdempotencyKey) == 0
    assert submit(api_env, s, key=key).status_code == 202


def test_unknown_fields_are_422_with_json_pointers(any_env: ApiEnv) -> None:
    """Unknown fields at any depth are listed with RFC 6901 pointers and code ``unknown_field``."""
    s = seed(any_env)
    body = {
        **spec(s),
        "colour": "red",
        "training": {"steps": 10, "lr": 1},
        "samples": {"prompts": [{"x": 1}]},
    }
    response = any_env.client.post(
        "/v1/jobs", json=body, headers={**s.tenant.headers, "Idempotency-Key": "k1"}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid_spec"
    errors = {(e["pointer"], e["code"]) for e in problem["errors"]}
    assert {
        ("/colour", "unknown_field"),
        ("/training/lr", "unknown_field"),
        ("/samples/prompts/0/x", "unknown_field"),
        ("/samples/prompts/0/prompt", "missing"),
    } <= errors


@pytest.mark.parametrize(
    ("mutate", "code", "pointer"),
    [
        (lambda s: {"dataset_id": "ds_01j9z3k8m2v6f4q7r1s5t0w3xy"}, "dataset_not_found", "/dataset_id"),
        (lambda s: {"base_model": "no-such-model"}, "base_model_not_found", "/base_model"),
        (lambda s: {"init_from": "art_01j9z3k8m2v6f4q7r1s5t0w3xy"}, "init_from_not_found", "/init_from"),
        (lambda s: {"dataset_id": None}, "missing", "/dataset_id"),
        (lambda s: {"training": {"steps": -1}}, "out_of_range", "/training/steps"),
    ],
)
def test_references_are_checked(api_env: ApiEnv, mutate: Any, code: str, pointer: str) -> None:
    """The dataset must be the tenant's, the model registered, init_from an artifact; spec ranges hold."""
    s = seed(api_env)
    response = submit(api_env, s, **mutate(s))
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert (errors[0]["pointer"], errors[0]["code"]) == (pointer, code)


def test_invalid_dataset_is_refused(api_env: ApiEnv) -> None:
    """A dataset whose validation failed cannot be trained on."""
    s = seed(api_env, dataset_status=DatasetStatus.INVALID)
    response = submit(api_env, s)
    assert response.status_code == 422
    assert response.json()["code"] == "dataset_not_ready"


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b'{"training": {"noise_offset": NaN}}', "application/json", 400, "invalid_json"),
        (b"[[[[[[[[" * 20000, "application/json", 400, "invalid_json"),
        (b'{"name": "a\\u0000b"}', "application/json", 422, "invalid_string"),
        (b"name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_malformed_bodies_are_4xx(
    api_env: ApiEnv, content: bytes, content_type: str, status: int, code: str
) -> None:
    """Broken JSON, NaN, absurd nesting, NUL characters and other media types are client errors."""
    s = seed(api_env)
    headers = {**s.tenant.headers, "Idempotency-Key": "k", "Content-Type": content_type}
    response = api_env.client.post("/v1/jobs", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_validate_writes_nothing_and_estimates(any_env: ApiEnv) -> None:
    """The dry run returns the resolved spec, warnings and estimate, and leaves no row behind."""
    s = seed(any_env)
    before = [_count(any_env, m) for m in (Job, JobEvent, OutboxMessage, IdempotencyKey)]
    body = spec(s, training={"steps": 60000, "learn_rate": "1e-3"})
    response = any_env.client.post("/v1/jobs/validate", json=body, headers=s.tenant.headers)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["resolved_spec"]["hypernetwork"]["enable_sizes"] == [768, 320, 640, 1280]
    assert result["resolved_spec"]["base_model"] == s.model_id
    assert any("learning rate" in w for w in result["warnings"])
    assert any("60000 steps" in w for w in result["warnings"])
    estimate = result["estimate"]
    assert estimate["steps"] == 60000 and estimate["hypernetwork_bytes"] > 1_000_000
    assert estimate["optimizer_bytes"] > estimate["hypernetwork_bytes"] and estimate["seconds"] > 0
    assert [_count(any_env, m) for m in (Job, JobEvent, OutboxMessage, IdempotencyKey)] == before
    bad = any_env.client.post("/v1/jobs/validate", json={**body, "extra": 1}, headers=s.tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/extra"


def _page(env: ApiEnv, s: Seed, **params: Any) -> dict[str, Any]:
    response = env.client.get("/v1/jobs", params=params, headers=s.tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_cursor_pagination_and_filters(any_env: ApiEnv) -> None:
    """Newest first; pages chain by ``next_cursor`` without gaps or repeats; filters narrow the list."""
    s = seed(any_env)
    ids = [new_job(any_env, s, end_user_id="u1" if i % 2 else "u2") for i in range(5)]
    run_to(any_env, ids[0], s.tenant.id, "running")
    seen: list[str] = []
    page = _page(any_env, s, limit=2)
    while True:
        seen.extend(j["id"] for j in page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        page = _page(any_env, s, limit=2, after=page["next_cursor"])
    assert seen == list(reversed(ids))
    assert [j["id"] for j in _page(any_env, s, status="running")["data"]] == [ids[0]]
    assert {j["id"] for j in _page(any_env, s, end_user_id="u1")["data"]} == {ids[1], ids[3]}
    assert _page(any_env, s, status="queued", end_user_id="u2")["data"][0]["id"] == ids[4]
    assert _page(any_env, s)["has_more"] is False


@pytest.mark.parametrize(
    ("params", "code"),
    [({"limit": 0}, "out_of_range"), ({"limit": 101}, "out_of_range"), ({"after": "bogus"}, "invalid_cursor"),
     ({"status": "done"}, "invalid_choice"), ({"end_user_id": "a\x00b"}, "string_pattern_mismatch")],
)  # fmt: skip
def test_bad_list_parameters_are_422(api_env: ApiEnv, params: dict[str, Any], code: str) -> None:
    """Out-of-range limits, foreign cursors and unknown statuses are 422 problems, not 500s."""
    s = seed(api_env)
    response = api_env.client.get("/v1/jobs", params=params, headers=s.tenant.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == code


def test_unknown_job_is_404(api_env: ApiEnv) -> None:
    """A well-formed unknown id and a malformed one are both 404 problems."""
    s = seed(api_env)
    for job_id in ("job_01j9z3k8m2v6f4q7r1s5t0w3xy", "not-an-id"):
        response = api_env.client.get(f"/v1/jobs/{job_id}", headers=s.tenant.headers)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_drain_outbox_publishes_after_commit_in_order(any_env: ApiEnv) -> None:
    """drain_outbox hands each committed message to ``publish`` once and marks it dispatched."""
    s = seed(any_env)
    ids = [new_job(any_env, s) for _ in range(3)]
    published: list[tuple[str, dict[str, Any]]] = []
    with any_env.session() as session:
        assert drain_outbox(session, lambda topic, payload: published.append((topic, payload))) == 3
    assert published == [("job.enqueue", {"job_id": i}) for i in ids]
    with any_env.session() as session:
        assert drain_outbox(session, lambda topic, payload: published.append((topic, payload))) == 0
        assert OutboxRepository(session).pending_count() == 0


def test_drain_outbox_keeps_what_a_failing_broker_did_not_take(api_env: ApiEnv) -> None:
    """When publish raises, the messages before it are marked and the rest stay pending."""
    s = seed(api_env)
    ids = [new_job(api_env, s) for _ in range(3)]
    taken: list[str] = []

    def flaky(topic: str, payload: dict[str, Any]) -> None:
        if len(taken) == 1:
            raise ConnectionError("broker down")
        taken.append(payload["job_id"])

    with api_env.session() as session, pytest.raises(ConnectionError):
        drain_outbox(session, flaky)
    with api_env.session() as session:
        assert OutboxRepository(session).pending_count() == 2
        rest: list[str] = []
        drain_outbox(session, lambda topic, payload: rest.append(payload["job_id"]))
    assert taken + rest == ids
