"""problem+json for every error, FastAPI's own included, and the X-Request-Id on every response."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi import APIRouter

from api.app import create_app
from api.middleware import JsonFormatter
from tests.api.conftest import ApiEnv

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "request_id", "errors"}


def _is_problem(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:hyperforge:problem:{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_unknown_route_is_a_404_problem(any_env: ApiEnv) -> None:
    body = _is_problem(any_env.client.get("/v1/nothing-here"), 404, "not_found")
    assert body["instance"] == "/v1/nothing-here"


def test_wrong_method_is_a_405_problem_with_allow(any_env: ApiEnv) -> None:
    r = any_env.client.put("/v1/datasets")
    _is_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"]  # starlette names the methods of the first route matching the path


def test_query_validation_is_a_422_with_pointers(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    r = api_env.client.get("/v1/datasets?limit=1000&status=weird", headers=tenant.headers)
    body = _is_problem(r, 422, "validation_failed")
    assert {(e["pointer"], e["code"]) for e in body["errors"]} == {
        ("/query/limit", "out_of_range"),
        ("/query/status", "invalid_choice"),
    }


def test_body_validation_points_into_the_body(api_env: ApiEnv) -> None:
    r = api_env.client.post(
        "/v1/admin/models",
        json={"name": "bad name!", "uri": "/x", "arch": "sd9"},
        headers=api_env.admin_headers,
    )
    body = _is_problem(r, 422, "validation_failed")
    assert {e["pointer"] for e in body["errors"]} == {"/name", "/arch"}


def test_malformed_json_is_a_422(api_env: ApiEnv) -> None:
    r = api_env.client.post(
        "/v1/admin/tenants",
        content=b'{"name": ',
        headers={**api_env.admin_headers, "Content-Type": "application/json"},
    )
    body = _is_problem(r, 422, "validation_failed")
    assert body["errors"][0]["code"] == "invalid_json"


def test_request_id_is_echoed_or_generated(any_env: ApiEnv) -> None:
    given = any_env.client.get("/healthz", headers={"X-Request-Id": "abc-123.def"})
    assert given.headers["x-request-id"] == "abc-123.def"
    generated = any_env.client.get("/healthz", headers={"X-Request-Id": "bad id with spaces\x7f"})
    assert re.fullmatch(r"req_[0-9a-z]{26}", generated.headers["x-request-id"])


def test_json_body_over_the_limit_is_a_413(api_env: ApiEnv) -> None:
    r = api_env.client.post(
        "/v1/admin/tenants",
        content=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        headers={**api_env.admin_headers, "Content-Type": "application/json"},
    )
    _is_problem(r, 413, "payload_too_large")


def test_streamed_json_body_over_the_limit_is_a_413(api_env: ApiEnv) -> None:
    """Without Content-Length the limit is enforced while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = api_env.client.post(
        "/v1/admin/tenants",
        content=chunks(),
        headers={**api_env.admin_headers, "Content-Type": "application/json"},
    )
    _is_problem(r, 413, "payload_too_large")


def test_access_log_is_one_json_line_per_request(api_env: ApiEnv, caplog: pytest.LogCaptureFixture) -> None:
    tenant = api_env.tenant()
    with caplog.at_level(logging.INFO, logger="api.access"):
        r = api_env.client.get("/v1/datasets?limit=1", headers=tenant.headers)
    (record,) = [rec for rec in caplog.records if rec.name == "api.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == r.headers["x-request-id"]
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "GET",
        "/v1/datasets",
        "/v1/datasets",
        200,
    )
    assert line["tenant_id"] == tenant.id and line["level"] == "info" and line["duration_ms"] >= 0
    assert tenant.key not in json.dumps(line)


def test_unexpected_errors_are_500_problems_without_internals(local_env: ApiEnv) -> None:
    app = create_app(local_env.settings, database=local_env.database, store=local_env.store)
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    body = _is_problem(r, 500, "internal_error")
    assert "secret" not in r.text
    assert body["detail"]
