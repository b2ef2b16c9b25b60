"""API keys: stored hashed, looked up by their public prefix, revoked, touched when used."""

from __future__ import annotations

from sqlalchemy import select, update

from jobq.errors import KeyNotFound
from jobq.keys import ApiKey, NewKey
from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, seconds_from_now
from jobq.store.rows import api_key_of
from jobq.store.tables import api_keys


class ApiKeys(StoreBase):
    @translate
    def create_api_key(self, new: NewKey, prefix: str, secret_hash: str) -> ApiKey | None:
        """Store a key; None when ``prefix`` is taken already (the caller draws another)."""
        stmt = (
            self.dialect.insert(api_keys)
            .values(
                name=new.name, prefix=prefix, secret_hash=secret_hash, queues=list(new.queues),
                scopes=list(new.scopes), created_at=db_now(),
            )
            .on_conflict_do_nothing(index_elements=[api_keys.c.prefix])
            .returning(*api_keys.c)
        )
        with self.write() as conn:
            row = conn.execute(stmt).first()
        return api_key_of(row) if row is not None else None

    @translate
    def get_api_key(self, prefix: str) -> ApiKey | None:
        """The key with this prefix, revoked or not; None when there is none."""
        with self.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        return api_key_of(row) if row is not None else None

    @translate
    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self.read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.id)).all()
        return [api_key_of(r) for r in rows]

    @translate
    def has_active_api_keys(self) -> bool:
        with self.read() as conn:
            found = conn.execute(
                select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
            ).first()
        return found is not None

    @translate
    def revoke_api_key(self, prefix: str) -> ApiKey:
        """Mark the key revoked (from the database's now). Revoking it again changes nothing."""
        with self.write() as conn:
            row = conn.execute(
                update(api_keys)
                .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=db_now())
                .returning(*api_keys.c)
            ).first()
            if row is None:
                row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        if row is None:
            raise KeyNotFound(prefix)
        return api_key_of(row)

    @translate
    def touch_api_key(self, key_id: int, every_seconds: float = 60.0) -> None:
        """Record that the key was used; writes at most once per ``every_seconds``."""
        with self.write() as conn:
            conn.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == key_id,
                    api_keys.c.revoked_at.is_(None),
                    (api_keys.c.last_used_at.is_(None))
                    | (api_keys.c.last_used_at < seconds_from_now(-every_seconds)),
                )
                .values(last_used_at=db_now())
            )
