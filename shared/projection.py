"""Projections of another service's entities, kept from its ``*.upserted`` events."""
from __future__ import annotations

from sqlalchemy.orm import Session


def upsert_newer(session: Session, model, key: str, version: int, **fields) -> bool:
    """Apply an upsert only if it is newer than what we hold: events may be redelivered or
    arrive out of order, and an older one must never overwrite a newer one."""
    row = session.get(model, key, with_for_update=True)
    if row is not None and row.version >= version:
        return False
    if row is None:
        row = model(id=key)
        session.add(row)
    for name, value in fields.items():
        setattr(row, name, value)
    row.version = version
    return True


def replace_key_hashes(session: Session, key_model, merchant_id: str, active: bool, hashes) -> None:
    """Keep exactly the merchant's current API key hashes (catalog.merchant.upserted): a
    rotated or suspended merchant's old keys stop working in every service that holds them."""
    from sqlalchemy import delete, insert

    session.execute(delete(key_model).where(key_model.merchant_id == merchant_id))
    if active and hashes:
        session.execute(insert(key_model), [{"key_hash": h, "merchant_id": merchant_id} for h in hashes])


def merchant_for_token(session: Session, key_model, token: str | None) -> str | None:
    """The merchant a bearer API key belongs to, from the projection of its hash."""
    from sqlalchemy import select

    from .auth import hash_secret
    if not token:
        return None
    return session.scalar(select(key_model.merchant_id).where(key_model.key_hash == hash_secret(token)))
