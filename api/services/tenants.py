"""Tenant use cases: create a tenant with its first key, issue and revoke keys, authenticate a key."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.db.models import ApiKey, Tenant
from api.db.repositories import ApiKeyRepository, TenantRepository
from api.errors import ValidationProblem
from api.security import (
    Principal,
    PrincipalCache,
    generate_api_key,
    hash_key,
    hashes_equal,
    looks_like_api_key,
    lookup_prefix,
)
from api.settings import Settings


@dataclass(frozen=True)
class IssuedKey:
    """A key row and its secret, which exists only here and in the one response that shows it."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class CreatedTenant:
    """A new tenant and its first key."""

    tenant: Tenant
    key: IssuedKey


def _pepper(settings: Settings) -> str:
    return settings.api_key_pepper.get_secret_value()


def create_tenant(session: Session, settings: Settings, name: str) -> CreatedTenant:
    """Create a tenant and its first API key; commits."""
    clean = name.strip()
    if not clean or len(clean) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in clean):
        raise ValidationProblem(
            "a tenant name is 1 to 200 printable characters", code="invalid_name", pointer="/name"
        )
    tenant = TenantRepository(session).add(clean)
    issued = _issue(session, settings, tenant.id)
    session.commit()
    return CreatedTenant(tenant=tenant, key=issued)


def issue_api_key(session: Session, settings: Settings, tenant_id: str) -> IssuedKey:
    """Give an existing tenant another key (for rotation); commits."""
    issued = _issue(session, settings, tenant_id)
    session.commit()
    return issued


def _issue(session: Session, settings: Settings, tenant_id: str) -> IssuedKey:
    new = generate_api_key(_pepper(settings))
    row = ApiKeyRepository(session).add(tenant_id, new.prefix, new.key_hash)
    return IssuedKey(key=row, secret=new.secret)


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke a key; commits. Processes that cached it stop accepting it within ``auth_cache_seconds``."""
    changed = ApiKeyRepository(session).revoke(key_id)
    session.commit()
    return changed


def authenticate_cached(settings: Settings, raw_key: str, cache: PrincipalCache) -> Principal | None:
    """The principal of a key verified within the cache's ttl, or None (then call ``authenticate``)."""
    if not looks_like_api_key(raw_key):
        return None
    return cache.get(hash_key(raw_key, _pepper(settings)))


def authenticate(
    session: Session, settings: Settings, raw_key: str, cache: PrincipalCache | None = None
) -> Principal | None:
    """The principal a raw API key stands for, or None when it is unknown, malformed or revoked."""
    if not looks_like_api_key(raw_key):
        return None
    key_hash = hash_key(raw_key, _pepper(settings))
    if cache is not None and (cached := cache.get(key_hash)) is not None:
        return cached
    found: Principal | None = None
    # Every candidate is compared (constant time each), so timing does not tell how many matched.
    for row in ApiKeyRepository(session).active_by_prefix(lookup_prefix(raw_key)):
        if hashes_equal(row.key_hash, key_hash):
            found = Principal(tenant_id=row.tenant_id, key_id=row.id)
    if found is not None and cache is not None:
        cache.put(key_hash, found)
    return found
