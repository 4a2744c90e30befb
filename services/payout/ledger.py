"""The double-entry ledger, free of Flask (design.md §7).

- Money is integer cents. Every entry's postings sum to zero, or it is not written.
- Every entry has an idempotency key; the unique constraint on it is the last word, and a
  key already posted makes ``post`` a no-op that returns ``None``.
- Entries are never edited: a correction is a new entry.
- Appends take a lock on the one ``ledger_head`` row (``SELECT ... FOR UPDATE`` on
  PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), so every entry gets
  the next sequence number and the hash of the one before: ``hash = sha256(prev_hash |
  canonical entry)``. Changing, removing or reordering an entry breaks the chain from there.
- Each account's cached balance is updated in the same transaction as its postings.

Lock order, to stay free of deadlocks on PostgreSQL: a transaction first locks its own rows
(the order, the withdrawal), then the head, then account rows (sorted). Account rows are
otherwise only locked alone (a withdrawal's reservation).
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import datetime, timezone

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from shared.db import DriverStatement, MultiRowInsert

from .models import Account, Entry, LedgerHead, Posting

GENESIS = "0" * 64
HEAD_ID = 1


class UnbalancedEntry(Exception):
    """Postings that do not sum to zero: a bug, never a state the ledger may reach."""


def account(owner: str, kind: str) -> str:
    return f"{owner}:{kind}"


def split_account(name: str) -> tuple[str, str]:
    owner, _, kind = name.rpartition(":")
    return owner, kind


def _stamp(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(prev_hash: str, seq: int, key: str, kind: str, order_no: str | None, withdrawal_id: str | None,
               memo: str | None, created_at: datetime, postings) -> str:
    body = json.dumps({"seq": seq, "key": key, "kind": kind, "order_no": order_no, "withdrawal_id": withdrawal_id,
                       "memo": memo, "at": _stamp(created_at),
                       "postings": sorted([a, int(c)] for a, c in postings)},
                      separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()


def _dialect_insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert


_head, _entries = LedgerHead.__table__, Entry.__table__
# Every append runs these: built once and run as DriverStatements (SQLAlchemy's execution
# machinery cost more than PostgreSQL's work on them), in the session's transaction.
_HEAD = DriverStatement(select(_head.c.seq, _head.c.hash).where(_head.c.id == HEAD_ID).with_for_update())
_SET_HEAD = DriverStatement(update(_head).where(_head.c.id == HEAD_ID)
                            .values(seq=bindparam("seq"), hash=bindparam("hash")))
_ENTRY_OF_KEY = DriverStatement(select(_entries.c.id).where(_entries.c.key == bindparam("key")))
_INSERT_ENTRY = DriverStatement(insert(_entries).values(
    {c: bindparam(c) for c in ("seq", "key", "kind", "order_no", "withdrawal_id", "memo", "created_at",
                               "prev_hash", "hash")}).returning(_entries.c.id))


def _lock_head(session: Session) -> tuple[int, str]:
    row = _HEAD.execute(session, {}).first()
    if row is None:
        session.execute(_dialect_insert(session)(_head).values(id=HEAD_ID, seq=0, hash=GENESIS)
                        .on_conflict_do_nothing(index_elements=["id"]))
        row = _HEAD.execute(session, {}).first()
    return row.seq, row.hash


def normalise(postings) -> list[tuple[str, int]]:
    merged: dict[str, int] = defaultdict(int)
    for name, cents in postings:
        if not isinstance(cents, int) or isinstance(cents, bool):
            raise UnbalancedEntry(f"{name}: {cents!r} is not a whole number of cents")
        merged[name] += cents
    return sorted((name, cents) for name, cents in merged.items() if cents)


# Multi-row statements as text built once per row count (SQLAlchemy would compile an
# on_conflict_do_update, or a multi-row VALUES, again on every call).
_INSERT_POSTINGS = MultiRowInsert(Posting.__table__, ["entry_id", "account", "amount_cents", "order_no"])
_MOVE_BALANCES = MultiRowInsert(
    Account.__table__, ["name", "owner", "kind", "balance_cents", "reserved_cents", "created_at"],
    suffix="ON CONFLICT (name) DO UPDATE SET balance_cents = accounts.balance_cents + excluded.balance_cents")


def post(session: Session, key: str, kind: str, postings, *, now: datetime, order_no: str | None = None,
         withdrawal_id: str | None = None, memo: str | None = None) -> int | None:
    """Append one entry; returns its sequence number, or None if ``key`` was posted before
    or nothing moves (all postings zero)."""
    lines = normalise(postings)
    if sum(cents for _, cents in lines) != 0:
        raise UnbalancedEntry(f"entry {key}: postings sum to {sum(c for _, c in lines)}, not 0")
    if not lines:
        return None
    seq, prev = _lock_head(session)
    if _ENTRY_OF_KEY.execute(session, {"key": key}).first() is not None:
        return None  # posted before; under the head lock nobody else can be posting it now
    seq += 1
    digest = entry_hash(prev, seq, key, kind, order_no, withdrawal_id, memo, now, lines)
    # A racing duplicate cannot pass the check above, but if it did the unique key refuses it.
    entry_id = _INSERT_ENTRY.execute(session, dict(
        seq=seq, key=key, kind=kind, order_no=order_no, withdrawal_id=withdrawal_id, memo=memo,
        created_at=now, prev_hash=prev, hash=digest)).scalar()
    conn = session.connection()
    _INSERT_POSTINGS.execute(conn, [{"entry_id": entry_id, "account": name, "amount_cents": cents,
                                     "order_no": order_no} for name, cents in lines])
    # One statement for every account: created on first use, else its balance moves. Rows
    # are sorted by name, so concurrent appends lock accounts in the same order.
    _MOVE_BALANCES.execute(conn, [{"name": name, "owner": split_account(name)[0], "kind": split_account(name)[1],
                                   "balance_cents": cents, "reserved_cents": 0, "created_at": now}
                                  for name, cents in lines])
    _SET_HEAD.execute(session, {"seq": seq, "hash": digest})
    return seq


def balance(session: Session, name: str) -> tuple[int, int]:
    row = session.execute(select(Account.balance_cents, Account.reserved_cents).where(Account.name == name)).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def imbalance(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Posting.amount_cents), 0))))


def verify(session: Session, batch: int = 2000) -> dict:
    """Recompute the chain, every entry's sum and every cached balance."""
    first_broken, prev, expected, count, last_seq = None, GENESIS, 1, 0, 0
    computed: dict[str, int] = defaultdict(int)
    while True:
        rows = session.execute(select(Entry).where(Entry.seq > last_seq).order_by(Entry.seq).limit(batch)).scalars().all()
        if not rows:
            break
        postings: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for entry_id, name, cents in session.execute(
                select(Posting.entry_id, Posting.account, Posting.amount_cents)
                .where(Posting.entry_id.in_([e.id for e in rows]))):
            postings[entry_id].append((name, int(cents)))
        for e in rows:
            lines = postings.get(e.id, [])
            for name, cents in lines:
                computed[name] += cents
            good = (e.seq == expected and e.prev_hash == prev and bool(lines)
                    and sum(c for _, c in lines) == 0
                    and e.hash == entry_hash(e.prev_hash, e.seq, e.key, e.kind, e.order_no, e.withdrawal_id,
                                             e.memo, e.created_at, lines))
            if not good and first_broken is None:
                first_broken = e.seq
            prev, expected, last_seq = e.hash, e.seq + 1, e.seq
            count += 1
        session.expunge_all()
    head = session.execute(select(LedgerHead.seq, LedgerHead.hash).where(LedgerHead.id == HEAD_ID)).first()
    head_ok = (head is None and count == 0) or (head is not None and head.seq == last_seq and head.hash == prev)
    if not head_ok and first_broken is None:
        first_broken = last_seq + 1  # entries after the last one we hold were removed
    total = imbalance(session)
    orphans = total - sum(computed.values())  # postings whose entry is gone
    mismatches = []
    for name, cached in session.execute(select(Account.name, Account.balance_cents).order_by(Account.name)):
        if int(cached) != computed.get(name, 0):
            mismatches.append({"account": name, "cached_cents": int(cached), "postings_cents": computed.get(name, 0)})
    known = set(session.scalars(select(Account.name)))
    for name in sorted(set(computed) - known):
        mismatches.append({"account": name, "cached_cents": None, "postings_cents": computed[name]})
    ok = first_broken is None and total == 0 and orphans == 0 and not mismatches and head_ok
    return {"ok": ok, "entries": count, "first_broken": first_broken, "imbalance_cents": total,
            "balance_mismatches": mismatches, "head_ok": head_ok}
