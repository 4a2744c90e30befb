"""Delivery's storage: every operation whose SQL differs between PostgreSQL and SQLite, behind
one interface. The rules that call them (what an order costs, when it is sold, refunded,
expired) live in domain.py; this module only knows how to make each change atomic.

``Storage`` is the plain version: Core statements in a write transaction. It serves SQLite
(embedded mode, one writer: ``BEGIN IMMEDIATE`` makes a read and the write after it agree)
and is PostgreSQL's fallback for the rare cases its fast paths leave out.

``PostgresStorage`` does the two operations every purchase runs as one statement each, in
autocommit: one round trip instead of four (``BEGIN``, read, write, ``COMMIT``). Each writes
only if what the caller read is still current, so no lock is held across round trips, and
either writes all of its rows or none. Key claims skip rows other buyers have locked
(``FOR UPDATE SKIP LOCKED``), so a hot product never serialises its buyers.

The contract both keep is tested by ``services/delivery/tests/test_storage.py`` on both
backends, races included.
"""
from __future__ import annotations

from sqlalchemy import Boolean, Integer, bindparam, column, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.db import Database, DriverStatement, InsertIgnoringConflicts

from .models import CardKey, KeyPool, Merchant, Order, OrderKey, Payment, Product, outbox

# What ``place_order`` did.
PLACED, OUT_OF_STOCK, STALE = "placed", "out_of_stock", "stale"

_P, _M, _O, _Pay = Product.__table__, Merchant.__table__, Order.__table__, Payment.__table__

# What an order is priced and limited by, with the versions ``place_order`` checks.
_TERMS = DriverStatement(
    select(_P.c.merchant_id, _P.c.title, _P.c.price_cents, _P.c.cost_cents, _P.c.currency, _P.c.status, _P.c.max_per_order,
           _P.c.commission, _P.c.reusable_keys, _P.c.version.label("product_version"),
           _M.c.status.label("merchant_status"), _M.c.fee_bps, _M.c.version.label("merchant_version"))
    .join_from(_P, _M, _M.c.id == _P.c.merchant_id).where(_P.c.id == bindparam("product_id")))
_INSERT_ORDER = insert(_O)

# What a payment reads of its order: the checks, the risk gate and the events' payloads.
_ORDER_FOR_PAYMENT = select(*[_O.c[name] for name in (
    "order_no", "provider", "status", "paid_at", "amount_cents", "currency", "risk_decision", "product_id",
    "merchant_id", "quantity", "cost_cents", "fee_bps", "commission", "buyer_user_id", "ref_code", "email")]) \
    .where(_O.c.order_no == bindparam("order_no"))
_ORDER_READ = DriverStatement(_ORDER_FOR_PAYMENT)
# SQLite compiles FOR UPDATE away: it has one writer anyway (BEGIN IMMEDIATE).
_ORDER_LOCKED = DriverStatement(_ORDER_FOR_PAYMENT.with_for_update())
PAYMENT_COLUMNS = ["provider", "txn_id", "order_no", "amount_cents", "currency", "status", "received_at"]
# The unique (provider, txn_id) decides what is a replay, not a look-up before the insert.
_RECORD_PAYMENT = InsertIgnoringConflicts(_Pay, PAYMENT_COLUMNS, key=["provider", "txn_id"], returning=["id"])
_ORDER_STATE_LOCKED = DriverStatement(select(_O.c.status, _O.c.risk_decision)
                                      .where(_O.c.order_no == bindparam("order_no")).with_for_update())
_SET_RISK_DECISION = DriverStatement(update(_O).where(_O.c.order_no == bindparam("key"))
                                     .values(risk_decision=bindparam("decision")))
_SET_ORDER_PAID = DriverStatement(update(_O).where(_O.c.order_no == bindparam("key")).values(
    status=bindparam("status"), paid_at=bindparam("paid_at"), delivered_at=bindparam("delivered_at")))


class TermsCache:
    """An order's terms per product, as last read in this process. A cached entry is never
    trusted on its own: ``place_order`` checks that the product's and merchant's versions (and
    the reusable-key count, which delivery changes itself) are still the ones read, and a
    stale entry is read again. Keyed by database too (tests run several in one process).
    Bounded: cleared when full."""

    def __init__(self, size: int = 10_000):
        self.size, self._terms = size, {}

    def get(self, db: Database, product_id: str):
        return self._terms.get((db.url, product_id))

    def put(self, db: Database, product_id: str, terms) -> None:
        if len(self._terms) >= self.size:
            self._terms.clear()
        if terms is None:
            self._terms.pop((db.url, product_id), None)
        else:
            self._terms[(db.url, product_id)] = terms

    def clear(self) -> None:
        self._terms.clear()


terms_cache = TermsCache()


def _same_terms(current, seen) -> bool:
    return current is not None and (current.product_version, current.merchant_version, current.reusable_keys) \
        == (seen.product_version, seen.merchant_version, seen.reusable_keys)


class _Shortfall(Exception):
    """Raised inside a write transaction to roll it back when the keys came up short."""


def _claim_statement(skip_locked: bool):
    pool = KeyPool.__table__
    candidates = select(pool.c.key_id).where(pool.c.product_id == bindparam("product_id")) \
        .order_by(pool.c.key_id).limit(bindparam("count"))
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    return delete(pool).where(pool.c.key_id.in_(candidates.scalar_subquery())).returning(pool.c.key_id)


def reusable_key_ids(session: Session, product_id: str) -> list[int]:
    return list(session.scalars(select(CardKey.id).where(
        CardKey.product_id == product_id, CardKey.reusable.is_(True), CardKey.retired_at.is_(None))
        .order_by(CardKey.id)))


class Storage:
    """The plain implementation (SQLite; PostgreSQL's fallbacks)."""

    skip_locked = False  # PostgreSQL: claims and the expiry job pass over rows others hold
    _claim = _claim_statement(skip_locked=False)

    # -- terms and orders -----------------------------------------------------------------------

    def terms(self, db: Database, product_id: str, fresh: bool = False):
        """The product's terms (None: unknown), from this process's cache unless ``fresh``."""
        terms = None if fresh else terms_cache.get(db, product_id)
        if terms is None:
            terms = self._read_terms(db, product_id)
            terms_cache.put(db, product_id, terms)
        return terms

    def _read_terms(self, db: Database, product_id: str):
        with db.read() as session:
            return _TERMS.execute(session, {"product_id": product_id}).first()

    def place_order(self, db: Database, order: dict, created: dict, terms) -> str:
        """Insert ``order`` (the row's values) holding ``order["quantity"]`` keys and its
        ``delivery.order.created`` outbox row ``created``, all or nothing, if ``terms`` are
        still current. Returns PLACED, OUT_OF_STOCK or STALE (nothing written but by PLACED).
        An order number already taken raises ``IntegrityError``."""
        try:
            with db.write() as session:
                if not _same_terms(_TERMS.execute(session, {"product_id": order["product_id"]}).first(), terms):
                    return STALE
                session.execute(_INSERT_ORDER, order)
                if not self.allocate(session, order["order_no"], order["product_id"], range(order["quantity"]),
                                     reusable_keys=terms.reusable_keys):
                    raise _Shortfall
                outbox.add_row(session, created)
        except _Shortfall:
            return OUT_OF_STOCK
        return PLACED

    def read_order(self, db: Database, order_no: str):
        """What a payment reads of its order (a row; None: no such order), without a lock."""
        with db.read() as session:
            return _ORDER_READ.execute(session, {"order_no": order_no}).first()

    def lock_order(self, session: Session, order_no: str):
        """``read_order`` under a row lock held until ``session`` ends."""
        return _ORDER_LOCKED.execute(session, {"order_no": order_no}).first()

    def lock_state(self, session: Session, order_no: str):
        """The order's ``status`` and ``risk_decision`` (None: no such order), under a row lock."""
        return _ORDER_STATE_LOCKED.execute(session, {"order_no": order_no}).first()

    def set_risk_decision(self, session: Session, order_no: str, decision: str) -> None:
        _SET_RISK_DECISION.execute(session, {"key": order_no, "decision": decision})

    def record_payment(self, session: Session, payment: dict) -> bool:
        """Insert a payment row (``PAYMENT_COLUMNS``); False when its (provider, txn_id) is known."""
        return _RECORD_PAYMENT.execute(session, [payment]).first() is not None

    def pay_pending(self, db: Database, payment: dict, seen_decision: str | None, status: str,
                    paid_at, delivered_at, events: list[dict]) -> tuple[bool, bool]:
        """A pending order paid in full, which holds all its keys: if the order is still
        pending with the risk decision ``seen_decision``, record ``payment`` and, unless it is
        a replay, set the order's ``status``, ``paid_at``, ``delivered_at`` and write the
        ``events`` outbox rows. Returns (current: the order was as read, recorded: the
        payment was new); nothing is written unless both."""
        with db.write() as session:
            state = self.lock_state(session, payment["order_no"])
            if state is None or state.status != "pending" or state.risk_decision != seen_decision:
                return False, False
            if not self.record_payment(session, payment):
                return True, False
            _SET_ORDER_PAID.execute(session, {"key": payment["order_no"], "status": status, "paid_at": paid_at,
                                              "delivered_at": delivered_at})
            for event in events:
                outbox.add_row(session, event)
        return True, True

    def lock_expired(self, session: Session, now, limit: int) -> list[Order]:
        """Up to ``limit`` pending orders past their expiry, oldest first, locked (PostgreSQL:
        those no other expiry job holds, so two replicas split the work instead of waiting)."""
        query = select(Order).where(Order.status == "pending", Order.expires_at < now) \
            .order_by(Order.expires_at).limit(limit)
        if self.skip_locked:
            query = query.with_for_update(skip_locked=True)
        return list(session.scalars(query))

    # -- the key pool ---------------------------------------------------------------------------

    def claim_keys(self, session: Session, product_id: str, count: int) -> list[int]:
        """Take up to ``count`` unsold keys out of the pool, oldest first; the caller checks the count."""
        return list(session.execute(self._claim, {"product_id": product_id, "count": count}).scalars())

    def allocate(self, session: Session, order_no: str, product_id: str, positions, keep_going: bool = False,
                 reusable_keys: int | None = None) -> bool:
        """Give the order keys for ``positions``: all of them, or none (False). A product with
        reusable keys hands them out in turn and never runs out. With ``keep_going`` a
        shortfall is undone by a savepoint, so the caller's transaction can go on (a payment
        that must stand even when the keys are gone). ``reusable_keys``: the product's count,
        when the caller has read it already."""
        positions = list(positions)
        if reusable_keys is None:
            reusable_keys = session.scalar(select(Product.reusable_keys).where(Product.id == product_id)) or 0
        reusable = reusable_key_ids(session, product_id) if reusable_keys else []
        if reusable:
            rows = [{"order_no": order_no, "position": pos, "key_id": reusable[pos % len(reusable)],
                     "reusable": True, "active": True} for pos in positions]
        else:
            savepoint = session.begin_nested() if keep_going else None
            ids = self.claim_keys(session, product_id, len(positions))
            if len(ids) < len(positions):
                if savepoint is not None:
                    savepoint.rollback()
                return False
            if savepoint is not None:
                savepoint.commit()
            rows = [{"order_no": order_no, "position": pos, "key_id": key_id, "reusable": False,
                     "active": True} for pos, key_id in zip(positions, ids)]
        session.execute(insert(OrderKey), rows)
        return True

    def release_keys(self, session: Session, order_no: str, product_id: str) -> None:
        """Return an unsold order's one-time keys to the pool (never a retired one)."""
        rows = session.execute(select(OrderKey.id, OrderKey.key_id, OrderKey.reusable, CardKey.retired_at)
                               .join(CardKey, CardKey.id == OrderKey.key_id)
                               .where(OrderKey.order_no == order_no, OrderKey.active.is_(True))).all()
        if not rows:
            return
        session.execute(delete(OrderKey).where(OrderKey.id.in_([r.id for r in rows])))
        back = [{"key_id": r.key_id, "product_id": product_id}
                for r in rows if not r.reusable and r.retired_at is None]
        if back:
            session.execute(insert(KeyPool), back)


_PG = postgresql.dialect()


def _typed_binds(columns, prefix: str = "") -> str:
    """``CAST(:name AS type), ...``: a bind in a SELECT list gets no type from the column it
    is inserted into (``INSERT ... SELECT``), and text would not convert to JSON."""
    return ", ".join(f"CAST(:{prefix}{c.name} AS {c.type.compile(dialect=_PG)})" for c in columns)


def _place_order_statement() -> DriverStatement:
    """Check the terms read earlier are still current, lock ``quantity`` unsold keys (``SKIP
    LOCKED``), and only if there are that many insert the order, take the locked keys out of
    the pool, record them and write the outbox row. The keys are locked before anything
    depends on them, so no shortfall has to be undone."""
    columns = [c.name for c in _O.columns]
    announce, announce_binds = outbox.inline_values(1)
    return DriverStatement(text(f"""
        WITH terms AS (
            SELECT FROM products p JOIN merchants m ON m.id = p.merchant_id
            WHERE p.id = :product_id AND p.version = :product_version AND m.version = :merchant_version
              AND p.reusable_keys = 0),
        candidates AS MATERIALIZED (
            SELECT key_id FROM key_pool WHERE product_id = :product_id AND EXISTS (SELECT FROM terms)
            ORDER BY key_id LIMIT :quantity FOR UPDATE SKIP LOCKED),
        new_order AS (
            INSERT INTO orders ({", ".join(columns)}) SELECT {_typed_binds(_O.columns)}
            WHERE EXISTS (SELECT FROM terms) AND (SELECT count(*) FROM candidates) = :quantity
            RETURNING order_no),
        claimed AS (
            DELETE FROM key_pool WHERE key_id IN (SELECT key_id FROM candidates) AND EXISTS (SELECT FROM new_order)
            RETURNING key_id),
        sold AS (
            INSERT INTO order_keys (order_no, position, key_id, reusable, active)
            SELECT (SELECT order_no FROM new_order), row_number() OVER (ORDER BY key_id) - 1, key_id, false, true
            FROM claimed RETURNING key_id),
        announced AS ({announce} WHERE EXISTS (SELECT FROM new_order))
        SELECT EXISTS (SELECT FROM terms) AS terms_current, (SELECT count(*) FROM sold) AS sold""")
        .bindparams(*[bindparam(c.name, type_=c.type) for c in _O.columns], *announce_binds,
                    bindparam("product_version", type_=Integer()), bindparam("merchant_version", type_=Integer()))
        .columns(column("terms_current", Boolean()), column("sold", Integer())))


def _pay_pending_statement(events: int) -> DriverStatement:
    """Lock the order row if it is still pending with the risk decision the caller read,
    record the payment, mark the order paid (or delivered) and write its ``events`` outbox
    rows; the unique (provider, txn_id) decides what is a replay."""
    announce, announce_binds = outbox.inline_values(events)
    payment_binds = [bindparam(f"payment_{c}", type_=_Pay.c[c].type) for c in PAYMENT_COLUMNS]
    payment = _typed_binds([_Pay.c[c] for c in PAYMENT_COLUMNS], "payment_")
    return DriverStatement(text(f"""
        WITH current AS (
            SELECT FROM orders WHERE order_no = :payment_order_no AND status = 'pending'
              AND risk_decision IS NOT DISTINCT FROM CAST(:seen_decision AS VARCHAR) FOR UPDATE),
        recorded AS (
            INSERT INTO {_Pay.name} ({", ".join(PAYMENT_COLUMNS)}) SELECT {payment} FROM current
            ON CONFLICT (provider, txn_id) DO NOTHING RETURNING id),
        sold AS (
            UPDATE orders SET status = :order_status, paid_at = :paid_at, delivered_at = :delivered_at
            WHERE order_no = :payment_order_no AND EXISTS (SELECT FROM recorded)),
        announced AS ({announce} WHERE EXISTS (SELECT FROM recorded))
        SELECT EXISTS (SELECT FROM current) AS current, EXISTS (SELECT FROM recorded) AS recorded""").bindparams(
        *payment_binds, bindparam("seen_decision", type_=_O.c.risk_decision.type),
        bindparam("order_status", type_=_O.c.status.type),
        bindparam("paid_at", type_=_O.c.paid_at.type), bindparam("delivered_at", type_=_O.c.delivered_at.type),
        *announce_binds).columns(column("current", Boolean()), column("recorded", Boolean())))


class PostgresStorage(Storage):
    """PostgreSQL: the purchase's two writes as one autocommit statement each; claims skip
    locked keys."""

    skip_locked = True
    _claim = _claim_statement(skip_locked=True)
    _place = _place_order_statement()
    _pay = {1: _pay_pending_statement(1), 2: _pay_pending_statement(2)}

    def _read_terms(self, db: Database, product_id: str):
        with db.autocommit() as conn:
            return _TERMS.execute(conn, {"product_id": product_id}).first()

    def place_order(self, db: Database, order: dict, created: dict, terms) -> str:
        if terms.reusable_keys:  # handed out in turn, not claimed: the plain transaction does it
            return super().place_order(db, order, created, terms)
        with db.autocommit() as conn:
            placed = self._place.execute(conn, {
                **order, **outbox.inline_params([created]),
                "product_version": terms.product_version, "merchant_version": terms.merchant_version}).first()
        if not placed.terms_current:
            return STALE
        return PLACED if placed.sold == order["quantity"] else OUT_OF_STOCK

    def read_order(self, db: Database, order_no: str):
        with db.autocommit() as conn:
            return _ORDER_READ.execute(conn, {"order_no": order_no}).first()

    def pay_pending(self, db: Database, payment: dict, seen_decision: str | None, status: str,
                    paid_at, delivered_at, events: list[dict]) -> tuple[bool, bool]:
        with db.autocommit() as conn:
            result = self._pay[len(events)].execute(conn, {
                **{f"payment_{c}": v for c, v in payment.items()}, "seen_decision": seen_decision,
                "order_status": status, "paid_at": paid_at, "delivered_at": delivered_at,
                **outbox.inline_params(events)}).first()
        return result.current, result.current and result.recorded


_SQLITE, _POSTGRES = Storage(), PostgresStorage()


def of(target: Database | Session) -> Storage:
    """The storage for a database, or for the database a session is bound to."""
    if isinstance(target, Database):
        postgres = not target.is_sqlite
    else:
        postgres = target.get_bind().dialect.name == "postgresql"
    return _POSTGRES if postgres else _SQLITE
