"""FastAPI dependencies as ``Annotated`` aliases: ``SessionDep``, ``TenantDep``, ``SettingsDep`` ...

The app factory puts the settings, the ``Database``, the object store and the key cache on
``app.state``; these read them from there, so a test can build an app around its own database
and store without patching anything.

FastAPI runs a plain ``def`` dependency in the threadpool, a hop that costs more than reading an
attribute; so the getters, and the key check when the verified-key cache answers, are ``async``
and never block. Only work that does I/O (a session, a key lookup on a cache miss) goes to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.db.engine import Database
from api.errors import ForbiddenProblem, UnauthorizedProblem
from api.security import Principal, PrincipalCache, admin_token_matches
from api.services.tenants import authenticate, authenticate_cached
from api.settings import Settings
from api.storage import ObjectStore

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer hf_live_...` (a tenant's API key).",
)
admin_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="`Authorization: Bearer <HYPERFORGE_ADMIN_TOKEN>` (operators only).",
)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return _settings(request)


async def get_database(request: Request) -> Database:
    """The app's database (engine + session factory)."""
    return _database(request)


async def get_store(request: Request) -> ObjectStore:
    """The app's object store."""
    store: ObjectStore = request.app.state.store
    return store


def get_session(request: Request) -> Iterator[Session]:
    """A session for the request; services commit, anything uncommitted is rolled back at the end."""
    with _database(request).session() as session:
        yield session


def _authenticate(
    database: Database, settings: Settings, raw_key: str, cache: PrincipalCache
) -> Principal | None:
    # A short session of its own: the request's session must not hold a connection through a long upload.
    with database.session() as session:
        return authenticate(session, settings, raw_key, cache)


async def _verify(
    request: Request, settings: Settings, raw_key: str, cache: PrincipalCache
) -> Principal | None:
    """Check a key the cache did not answer for against the database, one lookup per key at a time.

    When a cached key expires, every request carrying it misses at once; without the per-key lock
    each would take a thread and a pooled connection (opening overflow ones) for the same answer.
    Those behind the first find the key cached when they get the lock. With the cache off
    (``ttl == 0``) requests look up in parallel, as nothing would be shared.
    """
    database = _database(request)
    if cache.ttl <= 0:
        return await run_in_threadpool(_authenticate, database, settings, raw_key, cache)
    locks: dict[str, asyncio.Lock] = request.app.state.key_lookups
    lock = locks.setdefault(raw_key, asyncio.Lock())
    try:
        async with lock:
            principal = authenticate_cached(settings, raw_key, cache)
            if principal is None:
                principal = await run_in_threadpool(_authenticate, database, settings, raw_key, cache)
            return principal
    finally:
        if not lock.locked() and locks.get(raw_key) is lock:
            del locks[raw_key]  # bounded by the lookups in flight, whatever keys clients send


async def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    """The tenant the request's API key belongs to; 401 problem otherwise."""
    if credentials is None:
        raise UnauthorizedProblem("send 'Authorization: Bearer <api key>'", code="missing_api_key")
    cache: PrincipalCache = request.app.state.key_cache
    settings = _settings(request)
    # A key verified in the last few seconds is answered here; only a miss reads the database.
    principal = authenticate_cached(settings, credentials.credentials, cache)
    if principal is None:
        principal = await _verify(request, settings, credentials.credentials, cache)
    if principal is None:
        raise UnauthorizedProblem("the API key is not valid or was revoked", code="invalid_api_key")
    request.state.tenant_id = principal.tenant_id
    return principal


async def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_scheme)]
) -> None:
    """Let only holders of the admin token through; 403 when no token is configured."""
    expected = _settings(request).admin_token
    if expected is None:
        raise ForbiddenProblem(
            "admin routes are disabled (HYPERFORGE_ADMIN_TOKEN is not set)", code="admin_disabled"
        )
    given = credentials.credentials if credentials is not None else None
    if not admin_token_matches(given, expected.get_secret_value()):
        raise UnauthorizedProblem("send 'Authorization: Bearer <admin token>'", code="invalid_admin_token")


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[ObjectStore, Depends(get_store)]
TenantDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Depends(require_admin)

# The query parameters every cursor-paginated list takes.
PageLimit = Annotated[int, Query(ge=1, le=100, description="Page size.")]
PageAfter = Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")]
