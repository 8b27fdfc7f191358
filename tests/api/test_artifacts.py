"""Artifacts: the job's listing, and content by redirect to S3 or streamed with Range from the filesystem."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.api.conftest import ApiEnv
from tests.api.jobs_support import add_artifact, new_job, seed

CONTENT = os.urandom(4096 + 17)
ARTIFACT_FIELDS = {"id", "kind", "name", "step", "bytes", "sha256", "content_type", "created_at"}


def _job_with_artifact(env: ApiEnv) -> tuple[dict[str, str], str, str]:
    s = seed(env)
    job_id = new_job(env, s)
    return s.tenant.headers, job_id, add_artifact(env, job_id, s.tenant.id, CONTENT)


def test_listing_in_order_with_kind_filter(any_env: ApiEnv) -> None:
    """Every artifact with the contract's fields, oldest first; ``kind`` narrows the list."""
    s = seed(any_env)
    job_id = new_job(any_env, s)
    ids = [
        add_artifact(any_env, job_id, s.tenant.id, b"ckpt", kind="checkpoint", name="inkwash-100.pt"),
        add_artifact(any_env, job_id, s.tenant.id, b"final", kind="hypernetwork", name="inkwash.pt"),
        add_artifact(any_env, job_id, s.tenant.id, b"csv", kind="loss_log", name="loss.csv"),
    ]
    body = any_env.client.get(f"/v1/jobs/{job_id}/artifacts", headers=s.tenant.headers).json()
    assert [a["id"] for a in body["data"]] == ids and body["has_more"] is False
    first = body["data"][0]
    assert set(first) == ARTIFACT_FIELDS
    assert (first["kind"], first["name"], first["bytes"]) == ("checkpoint", "inkwash-100.pt", 4)
    assert first["sha256"] == hashlib.sha256(b"ckpt").hexdigest()
    only = any_env.client.get(
        f"/v1/jobs/{job_id}/artifacts?kind=hypernetwork", headers=s.tenant.headers
    ).json()
    assert [a["id"] for a in only["data"]] == [ids[1]]
    assert (
        any_env.client.get(f"/v1/jobs/{job_id}/artifacts?kind=weird", headers=s.tenant.headers).status_code
        == 422
    )


def test_filesystem_content_whole_file(local_env: ApiEnv) -> None:
    """Without Range: 200, the bytes, their length, Accept-Ranges and an attachment file name."""
    headers, _, artifact_id = _job_with_artifact(local_env)
    response = local_env.client.get(f"/v1/artifacts/{artifact_id}/content", headers=headers)
    assert response.status_code == 200
    assert response.content == CONTENT
    assert response.headers["content-length"] == str(len(CONTENT))
    assert response.headers["accept-ranges"] == "bytes"
    assert 'filename="inkwash.pt"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=0-0", 0, 0), ("bytes=10-19", 10, 19), ("bytes=4000-", 4000, len(CONTENT) - 1),
     ("bytes=-17", len(CONTENT) - 17, len(CONTENT) - 1), ("bytes=4100-999999", 4100, len(CONTENT) - 1)],
)  # fmt: skip
def test_filesystem_content_ranges(local_env: ApiEnv, range_header: str, start: int, end: int) -> None:
    """One byte range: 206 with Content-Range and exactly those bytes (suffix and open ranges too)."""
    headers, _, artifact_id = _job_with_artifact(local_env)
    response = local_env.client.get(
        f"/v1/artifacts/{artifact_id}/content", headers={**headers, "Range": range_header}
    )
    assert response.status_code == 206
    assert response.content == CONTENT[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(CONTENT)}"
    assert response.headers["content-length"] == str(end - start + 1)


def test_filesystem_unsatisfiable_range_is_416(local_env: ApiEnv) -> None:
    """A range starting past the end is 416 with ``Content-Range: bytes */size``."""
    headers, _, artifact_id = _job_with_artifact(local_env)
    response = local_env.client.get(
        f"/v1/artifacts/{artifact_id}/content", headers={**headers, "Range": f"bytes={len(CONTENT)}-"}
    )
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert response.json()["code"] == "range_not_satisfiable"


def test_filesystem_unparsable_range_serves_the_whole_file(local_env: ApiEnv) -> None:
    """A Range this server does not parse (several ranges, other units) gets the whole file (RFC 9110)."""
    headers, _, artifact_id = _job_with_artifact(local_env)
    for value in ("bytes=0-1,5-6", "items=0-1", "bytes=abc"):
        response = local_env.client.get(
            f"/v1/artifacts/{artifact_id}/content", headers={**headers, "Range": value}
        )
        assert response.status_code == 200 and response.content == CONTENT


def test_filesystem_content_gone_is_404(local_env: ApiEnv) -> None:
    """An artifact whose file was removed from the store is a 404 problem, not a 500."""
    s = seed(local_env)
    job_id = new_job(local_env, s)
    artifact_id = add_artifact(local_env, job_id, s.tenant.id, b"soon gone")
    for key in local_env.store.list_keys(f"tenants/{s.tenant.id}/"):
        local_env.store.delete(key)
    response = local_env.client.get(f"/v1/artifacts/{artifact_id}/content", headers=s.tenant.headers)
    assert response.status_code == 404


def test_s3_content_redirects_to_a_presigned_url_that_downloads(api_env: ApiEnv) -> None:
    """302 to a presigned URL on the S3 server; following it yields the bytes, and it honours Range."""
    headers, _, artifact_id = _job_with_artifact(api_env)
    response = api_env.client.get(
        f"/v1/artifacts/{artifact_id}/content", headers=headers, follow_redirects=False
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(api_env.settings.s3_endpoint_url or "") and "Signature" in location
    assert response.headers["cache-control"] == "no-store"
    downloaded = httpx.get(location)
    assert downloaded.status_code == 200 and downloaded.content == CONTENT
    assert "inkwash.pt" in downloaded.headers.get("content-disposition", "")
    ranged = httpx.get(location, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == CONTENT[100:200]


def test_unknown_artifact_is_404(any_env: ApiEnv) -> None:
    """Well-formed unknown ids and malformed ids are 404."""
    s = seed(any_env)
    for artifact_id in ("art_01j9z3k8m2v6f4q7r1s5t0w3xy", "nope"):
        response = any_env.client.get(f"/v1/artifacts/{artifact_id}/content", headers=s.tenant.headers)
        assert response.status_code == 404
