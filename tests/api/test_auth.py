"""API keys, tenancy and the admin token."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from api.db.models import ApiKey
from api.security import PrincipalCache, generate_api_key, hash_key, looks_like_api_key
from api.services.tenants import authenticate, revoke_api_key
from tests.api.conftest import ApiEnv

PROTECTED = [
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/ds_x"),
    ("DELETE", "/v1/datasets/ds_x"),
    ("GET", "/v1/models"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("Basic dXNlcjpwYXNz", "missing_api_key"),
        ("Bearer hf_live_doesnotexistdoesnotexistdoesnotexist00", "invalid_api_key"),
        ("Bearer not-even-a-key", "invalid_api_key"),
    ],
)
def test_missing_or_bad_keys_are_401_problems(
    api_env: ApiEnv, method: str, path: str, authorization: str | None, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    r = api_env.client.request(method, path, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == code


def test_upload_without_a_key_is_refused_before_the_body_is_read(api_env: ApiEnv) -> None:
    before = api_env.all_keys()
    r = api_env.client.post("/v1/datasets", files=[("files", ("a.png", b"x" * 10, "image/png"))])
    assert r.status_code == 401
    assert api_env.all_keys() == before


def test_revoked_key_is_401(any_env: ApiEnv) -> None:
    tenant = any_env.tenant()
    assert any_env.client.get("/v1/datasets", headers=tenant.headers).status_code == 200
    with any_env.session() as session:
        assert revoke_api_key(session, tenant.key_id) is True
        assert revoke_api_key(session, tenant.key_id) is False
    r = any_env.client.get("/v1/datasets", headers=tenant.headers)
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"


def test_only_a_peppered_hash_is_stored(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    with api_env.session() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == tenant.key_id)).one()
    assert tenant.key.startswith("hf_live_") and looks_like_api_key(tenant.key)
    assert tenant.key not in (row.key_hash, row.prefix)
    assert row.prefix == tenant.key[:16]
    assert row.key_hash == hash_key(tenant.key, api_env.settings.api_key_pepper.get_secret_value())
    assert row.key_hash != hashlib.sha256(tenant.key.encode()).hexdigest()  # unpeppered would be guessable


def test_keys_are_random_and_well_formed() -> None:
    keys = {generate_api_key("pepper").secret for _ in range(200)}
    assert len(keys) == 200
    assert all(looks_like_api_key(k) and len(k) == 48 for k in keys)


def test_the_cache_remembers_only_verified_keys(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    wrong = tenant.key[:-1] + ("y" if tenant.key.endswith("x") else "x")  # never the key itself
    cache = PrincipalCache(ttl=60)
    with api_env.session() as session:
        assert authenticate(session, api_env.settings, wrong, cache) is None
        principal = authenticate(session, api_env.settings, tenant.key, cache)
    assert principal is not None and principal.tenant_id == tenant.id
    pepper = api_env.settings.api_key_pepper.get_secret_value()
    assert cache.get(hash_key(tenant.key, pepper)) == principal
    assert cache.get(hash_key(wrong, pepper)) is None


def test_admin_creates_a_tenant_whose_key_works(any_env: ApiEnv) -> None:
    r = any_env.client.post("/v1/admin/tenants", json={"name": "globex"}, headers=any_env.admin_headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ten_") and body["name"] == "globex"
    assert body["api_key"].startswith("hf_live_")
    ok = any_env.client.get("/v1/datasets", headers={"Authorization": f"Bearer {body['api_key']}"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "invalid_admin_token"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid_admin_token"),
    ],
)
def test_admin_routes_need_the_admin_token(
    api_env: ApiEnv, headers: dict[str, str], status: int, code: str
) -> None:
    for path, body in [
        ("/v1/admin/tenants", {"name": "x"}),
        ("/v1/admin/models", {"name": "m", "uri": "/x"}),
    ]:
        r = api_env.client.post(path, json=body, headers=headers)
        assert r.status_code == status and r.json()["code"] == code


def test_a_tenant_key_is_not_an_admin_token(api_env: ApiEnv) -> None:
    tenant = api_env.tenant()
    r = api_env.client.post("/v1/admin/tenants", json={"name": "x"}, headers=tenant.headers)
    assert r.status_code == 401


def test_admin_routes_are_off_without_a_configured_token(api_env: ApiEnv) -> None:
    app = api_env.client.app
    app.state.settings = api_env.settings.model_copy(update={"admin_token": None})  # type: ignore[attr-defined]
    r = api_env.client.post("/v1/admin/tenants", json={"name": "x"}, headers=api_env.admin_headers)
    assert r.status_code == 403 and r.json()["code"] == "admin_disabled"


def test_admin_tenant_body_is_validated(api_env: ApiEnv) -> None:
    r = api_env.client.post("/v1/admin/tenants", json={"name": "", "extra": 1}, headers=api_env.admin_headers)
    assert r.status_code == 422
    pointers = {e["pointer"]: e["code"] for e in r.json()["errors"]}
    assert pointers == {"/name": "out_of_range", "/extra": "unknown_field"}
    # Postgres cannot store NUL: refused as a 422, never a 500.
    nul = api_env.client.post("/v1/admin/tenants", json={"name": "a\x00b"}, headers=api_env.admin_headers)
    assert nul.status_code == 422 and nul.json()["errors"][0]["pointer"] == "/name"
