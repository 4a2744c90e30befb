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
