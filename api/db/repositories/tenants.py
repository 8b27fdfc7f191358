"""Tenants and their API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.db.models import ApiKey, Tenant
from api.db.repositories.base import expire_cached, rowcount
from api.db.types import utcnow


class TenantRepository:
    """Tenants."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, name: str) -> Tenant:
        """Create a tenant."""
        tenant = Tenant(name=name)
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        """A tenant by id."""
        return self.session.get(Tenant, tenant_id)

    def list_all(self) -> list[Tenant]:
        """Every tenant, oldest first."""
        return list(self.session.scalars(select(Tenant).order_by(Tenant.id)))


class ApiKeyRepository:
    """API keys: only the prefix and the peppered hash are stored."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, tenant_id: str, prefix: str, key_hash: str) -> ApiKey:
        """Store a new key's prefix and hash."""
        key = ApiKey(tenant_id=tenant_id, prefix=prefix, key_hash=key_hash)
        self.session.add(key)
        self.session.flush()
        return key

    def active_by_prefix(self, prefix: str) -> list[ApiKey]:
        """Unrevoked keys with this prefix (almost always zero or one)."""
        stmt = select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        return list(self.session.scalars(stmt))

    def list_for_tenant(self, tenant_id: str) -> list[ApiKey]:
        """A tenant's keys, revoked ones included."""
        return list(
            self.session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id))
        )

    def revoke(self, key_id: str, *, now: datetime | None = None) -> bool:
        """Revoke a key; False when it does not exist or is already revoked."""
        stmt = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        changed = rowcount(self.session.execute(stmt)) == 1
        expire_cached(self.session, ApiKey, key_id)
        return changed
