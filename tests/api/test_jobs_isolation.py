"""Tenant isolation over every job, event, artifact and webhook route: others' objects are 404, never 403."""

from __future__ import annotations

from typing import Any

import pytest

from api.services.cursors import encode_cursor
from tests.api.conftest import ApiEnv
from tests.api.jobs_support import add_artifact, new_job, run_to, seed, spec

UNKNOWN = {"job": "job_01j9z3k8m2v6f4q7r1s5t0w3xy", "art": "art_01j9z3k8m2v6f4q7r1s5t0w3xy",
           "whe": "whe_01j9z3k8m2v6f4q7r1s5t0w3xy"}  # fmt: skip
# (method, path template, extra request kwargs); {job}, {art}, {whe} are the owner's ids.
OBJECT_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/jobs/{job}", {}),
    ("POST", "/v1/jobs/{job}/cancel", {}),
    ("POST", "/v1/jobs/{job}/retry", {}),
    ("GET", "/v1/jobs/{job}/events", {}),
    ("GET", "/v1/jobs/{job}/events", {"headers": {"Accept": "text/event-stream"}}),
    ("GET", "/v1/jobs/{job}/artifacts", {}),
    ("GET", "/v1/artifacts/{art}/content", {}),
    ("GET", "/v1/webhook-endpoints/{whe}", {}),
    ("DELETE", "/v1/webhook-endpoints/{whe}", {}),
    ("GET", "/v1/webhook-endpoints/{whe}/deliveries", {}),
]


def _owned(env: ApiEnv) -> tuple[Any, dict[str, str]]:
    owner = seed(env)
    job = new_job(env, owner)
    run_to(env, job, owner.tenant.id, "failed")  # retryable: a 404 for the stranger is not a 409 in disguise
    art = add_artifact(env, job, owner.tenant.id, b"weights")
    whe = env.client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.215.14/h", "event_types": ["job.failed"]},
        headers=owner.tenant.headers,
    ).json()["id"]
    return owner, {"job": job, "art": art, "whe": whe}


def _call(env: ApiEnv, method: str, path: str, headers: dict[str, str], extra: dict[str, Any]) -> Any:
    return env.client.request(
        method, path, headers={**headers, **extra.get("headers", {})}, follow_redirects=False
    )


@pytest.mark.parametrize(("method", "template", "extra"), OBJECT_ROUTES)
def test_others_objects_are_404_like_missing_ones(
    any_env: ApiEnv, method: str, template: str, extra: dict[str, Any]
) -> None:
    """A stranger gets the same 404 problem as for an id that does not exist, and changes nothing."""
    owner, ids = _owned(any_env)
    stranger = any_env.tenant("stranger")
    response = _call(any_env, method, template.format(**ids), stranger.headers, extra)
    missing = _call(any_env, method, template.format(**UNKNOWN), stranger.headers, extra)
    assert response.status_code == missing.status_code == 404, response.text
    assert response.json()["code"] == missing.json()["code"] == "not_found"
    assert set(response.json()) == set(missing.json())
    # The owner still sees everything as it was.
    assert (
        any_env.client.get(f"/v1/jobs/{ids['job']}", headers=owner.tenant.headers).json()["status"]
        == "failed"
    )
    assert (
        any_env.client.get(f"/v1/webhook-endpoints/{ids['whe']}", headers=owner.tenant.headers).status_code
        == 200
    )
    owner_content = any_env.client.get(
        f"/v1/artifacts/{ids['art']}/content", headers=owner.tenant.headers, follow_redirects=False
    )
    assert owner_content.status_code in (200, 302)


@pytest.mark.parametrize(("method", "template", "extra"), OBJECT_ROUTES)
def test_every_route_needs_an_api_key(
    any_env: ApiEnv, method: str, template: str, extra: dict[str, Any]
) -> None:
    """Without credentials each route is 401, before any lookup."""
    _, ids = _owned(any_env)
    response = _call(any_env, method, template.format(**ids), {}, extra)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs/validate"),
        ("GET", "/v1/webhook-endpoints"),
        ("POST", "/v1/webhook-endpoints"),
    ],
)
def test_collection_routes_need_an_api_key(any_env: ApiEnv, method: str, path: str) -> None:
    """The collection routes are 401 without a key too."""
    assert any_env.client.request(method, path, json={}).status_code == 401


def test_lists_show_only_the_callers_objects(any_env: ApiEnv) -> None:
    """Job and endpoint listings never include another tenant's rows (with or without filters)."""
    _owned(any_env)
    stranger = seed(any_env)
    mine = new_job(any_env, stranger)
    jobs = any_env.client.get("/v1/jobs", headers=stranger.tenant.headers).json()["data"]
    assert [j["id"] for j in jobs] == [mine]
    assert any_env.client.get("/v1/jobs?status=failed", headers=stranger.tenant.headers).json()["data"] == []
    assert any_env.client.get("/v1/webhook-endpoints", headers=stranger.tenant.headers).json()["data"] == []


def test_others_cursor_reveals_nothing(api_env: ApiEnv) -> None:
    """A cursor made from another tenant's job id pages only the caller's own jobs."""
    _, ids = _owned(api_env)
    stranger = seed(api_env)
    mine = new_job(api_env, stranger)
    response = api_env.client.get(
        "/v1/jobs", params={"after": encode_cursor(ids["job"])}, headers=stranger.tenant.headers
    )
    assert response.status_code == 200
    assert {j["id"] for j in response.json()["data"]} <= {mine}


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/validate"])
def test_others_dataset_and_artifact_cannot_be_used(any_env: ApiEnv, path: str) -> None:
    """A spec naming another tenant's dataset or init_from artifact is refused as if they did not exist."""
    owner, ids = _owned(any_env)
    stranger = seed(any_env)
    headers = {**stranger.tenant.headers, "Idempotency-Key": "iso-1"}
    foreign_dataset = any_env.client.post(
        path, json=spec(stranger, dataset_id=owner.dataset_id), headers=headers
    )
    assert (
        foreign_dataset.status_code == 422
        and foreign_dataset.json()["errors"][0]["code"] == "dataset_not_found"
    )
    foreign_init = any_env.client.post(path, json=spec(stranger, init_from=ids["art"]), headers=headers)
    assert (
        foreign_init.status_code == 422 and foreign_init.json()["errors"][0]["code"] == "init_from_not_found"
    )
