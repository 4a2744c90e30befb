"""Delivery rules, free of Flask: reservation, payment, allocation, expiry, refunds.

A one-time key is claimed by deleting it from ``key_pool`` (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``, SQLite: the one writer), and the claimed count is checked against what was asked:
two buyers can never claim the same row, and a partial claim rolls back. ``order_keys``
carries a unique index on one-time keys as the last line of defence.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import Boolean, Integer, bindparam, column, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import metrics
from shared.errors import ApiError
from shared.auth import hash_secret
from shared.db import DriverStatement, InsertIgnoringConflicts, after_commit, is_postgres
from shared.events import utcnow
from shared.projection import merchant_for_token as projected_merchant_for_token
from shared.projection import replace_key_hashes, upsert_newer

from .models import (CardKey, KeyPool, Merchant, MerchantKey, Order, OrderKey, Payment, Product,
                     RateLimit, Refund, StockState, outbox)
from .vault import Vault

PAID_STATUSES = ("paid", "awaiting_stock", "delivered", "partially_refunded")
MAX_SECRET_LENGTH = 4096


# -- projections -----------------------------------------------------------------------------

def upsert_product(session: Session, p: dict) -> None:
    upsert_newer(session, Product, p["product_id"], p["version"], merchant_id=p["merchant_id"],
                 title=p["title"], price_cents=p["price_cents"], cost_cents=p.get("cost_cents", 0),
                 currency=p["currency"], status=p["status"], max_per_order=p["max_per_order"],
                 instructions=p.get("instructions", ""),
                 commission=p.get("commission") or {"levels_bps": [], "cap_bps": None})


def upsert_merchant(session: Session, p: dict) -> None:
    if upsert_newer(session, Merchant, p["merchant_id"], p["version"], status=p["status"],
                    fee_bps=p.get("fee_bps", 200)):
        replace_key_hashes(session, MerchantKey, p["merchant_id"], p["status"] == "active", p.get("api_key_hashes"))


def merchant_for_token(session: Session, token: str | None) -> str | None:
    return projected_merchant_for_token(session, MerchantKey, token)


# -- the vault -------------------------------------------------------------------------------

def import_keys(session: Session, vault: Vault, settings, product: Product, raw_keys: list,
                reusable: bool, now: datetime) -> dict:
    rejected = duplicates = 0
    fresh: dict[str, str] = {}
    for raw in raw_keys:
        secret = raw.strip() if isinstance(raw, str) else ""
        if not secret or len(secret) > MAX_SECRET_LENGTH or any(ord(ch) < 32 for ch in secret):
            rejected += 1
            continue
        fingerprint = vault.fingerprint(product.id, secret)
        if fingerprint in fresh:
            duplicates += 1
            continue
        fresh[fingerprint] = secret
    # During a vault key rotation older rows carry fingerprints under the previous key.
    aliases = {alias: fp for fp, secret in fresh.items() for alias in vault.all_fingerprints(product.id, secret)}
    known: set[str] = set()
    candidates = list(aliases)
    for start in range(0, len(candidates), 5000):
        chunk = candidates[start:start + 5000]
        known.update(aliases[hit] for hit in session.scalars(select(CardKey.fingerprint).where(
            CardKey.product_id == product.id, CardKey.fingerprint.in_(chunk))))
    rows = [{"product_id": product.id, "secret": vault.encrypt(product.id, secret), "fingerprint": fp,
             "reusable": reusable, "created_at": now}
            for fp, secret in fresh.items() if fp not in known]
    duplicates += len(fresh) - len(rows)
    if rows:
        ids = session.scalars(insert(CardKey).returning(CardKey.id, sort_by_parameter_order=True), rows).all()
        if reusable:
            product.reusable_keys = (product.reusable_keys or 0) + len(ids)
        else:
            session.execute(insert(KeyPool), [{"key_id": key_id, "product_id": product.id} for key_id in ids])
        fill_awaiting_orders(session, settings, product.id, now)
    return {"imported": len(rows), "duplicates": duplicates, "rejected": rejected}


def _claim_statement(postgres: bool):
    pool = KeyPool.__table__
    candidates = select(pool.c.key_id).where(pool.c.product_id == bindparam("product_id")) \
        .order_by(pool.c.key_id).limit(bindparam("count"))
    if postgres:
        candidates = candidates.with_for_update(skip_locked=True)
    return delete(pool).where(pool.c.key_id.in_(candidates.scalar_subquery())).returning(pool.c.key_id)


# Built once: a statement object reused is compiled once and its cache key is memoised.
_CLAIM = {True: _claim_statement(True), False: _claim_statement(False)}


def claim_keys(session: Session, product_id: str, count: int) -> list[int]:
    """Take up to ``count`` unsold keys out of the pool, oldest first; the caller checks the count."""
    return list(session.connection().execute(_CLAIM[is_postgres(session)],
                                             {"product_id": product_id, "count": count}).scalars())


def reusable_key_ids(session: Session, product_id: str) -> list[int]:
    return list(session.scalars(select(CardKey.id).where(
        CardKey.product_id == product_id, CardKey.reusable.is_(True), CardKey.retired_at.is_(None))
        .order_by(CardKey.id)))


def _allocate(session: Session, order_no: str, product_id: str, positions, keep_going: bool = False,
              reusable_keys: int | None = None) -> bool:
    """Give the order keys for ``positions``: all of them, or none (False). With
    ``keep_going`` a shortfall is undone by a savepoint, so the caller's transaction can go
    on (a payment that must stand even when the keys are gone). ``reusable_keys``: the
    product's count, when the caller has read it already."""
    positions = list(positions)
    if reusable_keys is None:
        product = session.get(Product, product_id)
        reusable_keys = product.reusable_keys if product is not None else 0
    reusable = reusable_key_ids(session, product_id) if reusable_keys else []
    if reusable:
        rows = [{"order_no": order_no, "position": pos, "key_id": reusable[pos % len(reusable)],
                 "reusable": True, "active": True} for pos in positions]
    else:
        savepoint = session.begin_nested() if keep_going else None
        ids = claim_keys(session, product_id, len(positions))
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


def release_keys(session: Session, order: Order) -> None:
    """Return an unsold order's one-time keys to the pool (never a retired one)."""
    rows = session.execute(select(OrderKey.id, OrderKey.key_id, OrderKey.reusable, CardKey.retired_at)
                           .join(CardKey, CardKey.id == OrderKey.key_id)
                           .where(OrderKey.order_no == order.order_no, OrderKey.active.is_(True))).all()
    if not rows:
        return
    session.execute(delete(OrderKey).where(OrderKey.id.in_([r.id for r in rows])))
    back = [{"key_id": r.key_id, "product_id": order.product_id}
            for r in rows if not r.reusable and r.retired_at is None]
    if back:
        session.execute(insert(KeyPool), back)


def active_keys(session: Session, order_no: str) -> list[OrderKey]:
    return list(session.scalars(select(OrderKey).where(OrderKey.order_no == order_no, OrderKey.active.is_(True))
                                .order_by(OrderKey.position)))


def reveal_keys(session: Session, vault: Vault, order: Order) -> list[str]:
    rows = session.execute(select(CardKey.secret).join(OrderKey, OrderKey.key_id == CardKey.id)
                           .where(OrderKey.order_no == order.order_no, OrderKey.active.is_(True))
                           .order_by(OrderKey.position)).scalars()
    return [vault.decrypt(order.product_id, blob) for blob in rows]


def rotate_vault(session: Session, vault: Vault, batch: int = 1000) -> int:
    """Re-seal up to ``batch`` keys still under a previous vault key; returns how many."""
    rows = session.scalars(select(CardKey).order_by(CardKey.id)).yield_per(batch)
    done = 0
    for key in rows:
        if vault.is_current(key.secret):
            continue
        secret = vault.decrypt(key.product_id, key.secret)
        key.secret = vault.encrypt(key.product_id, secret)
        key.fingerprint = vault.fingerprint(key.product_id, secret)
        done += 1
        if done >= batch:
            break
    return done


# -- orders ----------------------------------------------------------------------------------

def new_order_no(now: datetime) -> str:
    """The second it was made and 12 random digits. (8 digits collided: at 250 orders a second
    that is a 3% chance in a 100-second run, seen in the benchmark. The order's primary key
    refuses a collision and the API retries with a new number.)"""
    return f"{now:%y%m%d%H%M%S}{secrets.randbelow(10**12):012d}"


def hash_query_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def check_query_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    _, n, r, p, salt, digest = stored.split("$")
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate.hex(), digest)


_P, _M, _O, _OK = Product.__table__, Merchant.__table__, Order.__table__, OrderKey.__table__
_TERMS = DriverStatement(
    select(_P.c.merchant_id, _P.c.price_cents, _P.c.cost_cents, _P.c.currency, _P.c.status, _P.c.max_per_order,
           _P.c.commission, _P.c.reusable_keys, _P.c.version.label("product_version"),
           _M.c.status.label("merchant_status"), _M.c.fee_bps, _M.c.version.label("merchant_version"))
    .join_from(_P, _M, _M.c.id == _P.c.merchant_id).where(_P.c.id == bindparam("product_id")))
_INSERT_ORDER = insert(_O)


class TermsCache:
    """What an order is priced and limited by, per product, as last read in this process. A
    cached entry is never trusted on its own: the order's statement checks that the product's
    and merchant's versions (and the reusable-key count, which delivery changes itself) are
    still the ones read, and a stale entry is read again. Bounded: cleared when full."""

    def __init__(self, size: int = 10_000):
        self.size, self._terms = size, {}

    def get(self, product_id: str):
        return self._terms.get(product_id)

    def read(self, conn, product_id: str):
        terms = _TERMS.execute(conn, {"product_id": product_id}).first()
        if len(self._terms) >= self.size:
            self._terms.clear()
        if terms is None:
            self._terms.pop(product_id, None)
        else:
            self._terms[product_id] = terms
        return terms


terms_cache = TermsCache()


def _refusal(terms, quantity: int) -> ApiError | None:
    if terms is None or terms.status != "active" or terms.merchant_status != "active":
        return ApiError(422, "unknown_product", "no such product on sale", {"product_id": ["unknown product"]})
    if quantity > terms.max_per_order:
        return ApiError(422, "invalid", f"at most {terms.max_per_order} per order",
                        {"quantity": [f"must be at most {terms.max_per_order}"]})
    return None


def _check_terms(terms, quantity: int) -> None:
    refusal = _refusal(terms, quantity)
    if refusal is not None:
        raise refusal


def _new_order(terms, data: dict, client: dict, provider: str, now: datetime, settings) -> tuple[dict, str, dict]:
    """The order row's values, the buyer's access token and the ``delivery.order.created`` outbox row."""
    quantity = data["quantity"]
    token = secrets.token_urlsafe(24)
    values = dict(
        order_no=new_order_no(now), product_id=data["product_id"], merchant_id=terms.merchant_id,
        quantity=quantity, unit_price_cents=terms.price_cents,
        amount_cents=terms.price_cents * quantity, cost_cents=terms.cost_cents * quantity,
        currency=terms.currency, fee_bps=terms.fee_bps,
        commission=terms.commission or {"levels_bps": [], "cap_bps": None},
        email=data["email"].strip().lower(), status="pending",
        provider=provider, access_token_hash=hash_secret(token),
        query_password_hash=data.get("query_password_hash"),
        ref_code=data.get("ref_code"), buyer_user_id=data.get("buyer_user_id"),
        client_ip=client.get("ip"), device_id=data.get("device_id"), user_agent=client.get("user_agent"),
        risk_decision=None, refunded_quantity=0, refunded_cents=0, created_at=now,
        expires_at=now + timedelta(seconds=settings.reservation_seconds), paid_at=None, delivered_at=None)
    order_no = values["order_no"]
    created = outbox.row("delivery.order.created", {
        "order_no": order_no, "product_id": values["product_id"], "merchant_id": values["merchant_id"],
        "quantity": quantity, "amount_cents": values["amount_cents"], "currency": values["currency"],
        "email": values["email"], "buyer_user_id": values["buyer_user_id"], "ref_code": values["ref_code"],
        "client": {"ip": values["client_ip"], "device_id": values["device_id"], "user_agent": values["user_agent"]},
        "created_at": now.isoformat(),
    }, order_no)
    return values, token, created


_PG = postgresql.dialect()


def _typed_binds(columns, prefix: str = "") -> str:
    """``CAST(:name AS type), ...``: a bind in a SELECT list gets no type from the column it
    is inserted into (``INSERT ... SELECT``), and text would not convert to JSON."""
    return ", ".join(f"CAST(:{prefix}{c.name} AS {c.type.compile(dialect=_PG)})" for c in columns)


def _place_order_statement():
    """PostgreSQL, one statement in its own transaction: check the terms read earlier are still
    current, lock ``quantity`` unsold keys (``SKIP LOCKED``), and only if there are that many
    insert the order, take the locked keys out of the pool, record them and write the
    ``delivery.order.created`` outbox row. Nothing is written unless all of it is: the keys
    are locked before anything depends on them, so no shortfall has to be undone."""
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


_PLACE_ORDER_PG = _place_order_statement()


def create_order(db, settings, data: dict, client: dict, provider: str,
                 now: datetime) -> tuple[SimpleNamespace, str]:
    """The hottest write path. On PostgreSQL, an order of one-time keys is a single statement
    in autocommit (with the product's terms cached, one round trip in all); SQLite and
    products with reusable keys take a transaction. Returns the new row's values, for the
    response (a plain namespace: an ORM object would cost its instrumentation for nothing),
    and the buyer's access token."""
    if not db.is_sqlite:
        with db.autocommit() as conn:
            placed = _place_order_at_once(conn, settings, data, client, provider, now)
        if placed is not None:
            return placed
    with db.write() as session:
        return _place_order(session, settings, data, client, provider, now)


def _place_order_at_once(conn, settings, data, client, provider, now):
    """None when the product sells reusable keys (``_place_order`` does that)."""
    product_id, quantity = data["product_id"], data["quantity"]
    terms = terms_cache.get(product_id)
    if terms is None or _refusal(terms, quantity):  # never refuse on what may be stale
        terms = terms_cache.read(conn, product_id)
    for _ in range(3):  # terms changing under an order three times running is rare enough
        _check_terms(terms, quantity)
        if terms.reusable_keys:
            return None
        values, token, created = _new_order(terms, data, client, provider, now, settings)
        placed = _PLACE_ORDER_PG.execute(conn, {
            **values, **outbox.inline_params([created]),
            "product_version": terms.product_version, "merchant_version": terms.merchant_version}).first()
        if placed.terms_current:
            if placed.sold != quantity:
                raise ApiError(409, "out_of_stock", "not enough keys in stock for this order")
            metrics.orders.labels("pending").inc()
            return SimpleNamespace(**values), token
        terms = terms_cache.read(conn, product_id)  # changed since this process cached it
    raise ApiError(503, "busy", "the product changed while ordering; try again")


def _place_order(session: Session, settings, data, client, provider, now):
    conn = session.connection()
    terms = _TERMS.execute(conn, {"product_id": data["product_id"]}).first()
    _check_terms(terms, data["quantity"])
    values, token, created = _new_order(terms, data, client, provider, now, settings)
    conn.execute(_INSERT_ORDER, values)
    if not _allocate(session, values["order_no"], values["product_id"], range(data["quantity"]),
                     reusable_keys=terms.reusable_keys):
        raise ApiError(409, "out_of_stock", "not enough keys in stock for this order")
    outbox.add_row(session, created)
    after_commit(session, lambda: metrics.orders.labels("pending").inc())
    return SimpleNamespace(**values), token


def expire_reservations(session: Session, now: datetime, limit: int = 500) -> int:
    query = select(Order).where(Order.status == "pending", Order.expires_at < now) \
        .order_by(Order.expires_at).limit(limit)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    orders = session.scalars(query).all()
    for order in orders:
        order.status = "expired"
        release_keys(session, order)
    if orders:
        after_commit(session, lambda n=len(orders): metrics.orders.labels("expired").inc(n))
    return len(orders)


# -- payment and fulfilment ------------------------------------------------------------------

def risk_gate(order: Order, settings) -> str:
    """The seam where risk plugs in (design §5): approve, review, reject, or wait for it."""
    if order.risk_decision in ("approve", "review", "reject"):
        return order.risk_decision
    return "wait" if settings.risk_required else "approve"


def _reject_callback(provider: str, reason: str, status: int, code: str, message: str):
    metrics.payment_callbacks_rejected.labels(provider, reason).inc()
    return ApiError(status, code, message)


_Pay = Payment.__table__
# What a payment reads of its order: the checks, the risk gate and the events' payloads.
_ORDER_FOR_PAYMENT = select(*[_O.c[name] for name in (
    "order_no", "provider", "status", "paid_at", "amount_cents", "currency", "risk_decision", "product_id",
    "merchant_id", "quantity", "cost_cents", "fee_bps", "commission", "buyer_user_id", "ref_code", "email")]) \
    .where(_O.c.order_no == bindparam("order_no"))
_ORDER_READ = DriverStatement(_ORDER_FOR_PAYMENT)
# SQLite compiles FOR UPDATE away: it has one writer anyway (BEGIN IMMEDIATE).
_ORDER_LOCKED = DriverStatement(_ORDER_FOR_PAYMENT.with_for_update())
_PAYMENT_COLUMNS = ["provider", "txn_id", "order_no", "amount_cents", "currency", "status", "received_at"]
# The unique (provider, txn_id) decides what is a replay, not a look-up before the insert.
_RECORD_PAYMENT = InsertIgnoringConflicts(_Pay, _PAYMENT_COLUMNS, key=["provider", "txn_id"], returning=["id"])
_SET_ORDER_PAID = DriverStatement(update(_O).where(_O.c.order_no == bindparam("key")).values(
    status=bindparam("status"), paid_at=bindparam("paid_at"), delivered_at=bindparam("delivered_at")))


def _pay_and_sell_statement(events: int) -> DriverStatement:
    """PostgreSQL, a pending order paid in full, as one statement: lock the order row if it is
    still pending with the risk decision the caller read, record the payment, mark the order
    paid (or delivered) and write its ``events`` outbox rows. Whether the caller read the
    order under a lock or not, nothing is written unless the order is as it was read; the
    unique (provider, txn_id) still decides what is a replay. Returns ``current`` (the order
    was as read) and ``recorded`` (the payment was new)."""
    announce, announce_binds = outbox.inline_values(events)
    payment_binds = [bindparam(f"payment_{c}", type_=_Pay.c[c].type) for c in _PAYMENT_COLUMNS]
    payment = _typed_binds([_Pay.c[c] for c in _PAYMENT_COLUMNS], "payment_")
    return DriverStatement(text(f"""
        WITH current AS (
            SELECT FROM orders WHERE order_no = :payment_order_no AND status = 'pending'
              AND risk_decision IS NOT DISTINCT FROM CAST(:seen_decision AS VARCHAR) FOR UPDATE),
        recorded AS (
            INSERT INTO {_Pay.name} ({", ".join(_PAYMENT_COLUMNS)}) SELECT {payment} FROM current
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


_PAY_AND_SELL = {1: _pay_and_sell_statement(1), 2: _pay_and_sell_statement(2)}


def _paid_payload(order, provider: str, notice, now: datetime) -> dict:
    return {"order_no": order.order_no, "amount_cents": order.amount_cents, "currency": order.currency,
            "provider": provider, "provider_txn_id": notice.txn_id, "paid_at": now.isoformat(),
            "payer_account": getattr(notice, "payer_account", None)}


def apply_payment(db, settings, provider: str, notice, now: datetime) -> str:
    """Apply a verified payment notice; returns the outcome.

    The common case is a pending order paid in full, whose keys are all reserved: on
    PostgreSQL that is a read and one statement in autocommit, which writes only if the order
    is still as read (``_pay_and_sell``). Anything else, or an order that changed in between,
    is decided under a lock on the order row."""
    if not db.is_sqlite:
        with db.autocommit() as conn:
            order = _ORDER_READ.execute(conn, {"order_no": notice.order_no}).first()
            if _sells_at_once(order, provider, notice, settings):
                outcome = _pay_and_sell(conn, order, provider, notice, now, risk_gate(order, settings))
                if outcome is not None:
                    return outcome
    with db.write() as session:
        return _apply_payment_locked(session, settings, provider, notice, now)


def _sells_at_once(order, provider: str, notice, settings) -> bool:
    return (order is not None and order.provider == provider and notice.status == "paid"
            and order.status == "pending" and notice.amount_cents == order.amount_cents
            and notice.currency == order.currency and risk_gate(order, settings) != "reject")


def _apply_payment_locked(session: Session, settings, provider: str, notice, now: datetime) -> str:
    conn = session.connection()
    order = _ORDER_LOCKED.execute(conn, {"order_no": notice.order_no}).first()
    if order is None:
        raise _reject_callback(provider, "unknown_order", 404, "not_found", "order not found")
    if order.provider != provider:
        raise _reject_callback(provider, "wrong_provider", 422, "wrong_provider",
                               "the order was not created for this provider")
    if notice.status != "paid":
        return "ignored"
    if _sells_at_once(order, provider, notice, settings):
        outcome = _pay_and_sell(conn, order, provider, notice, now, risk_gate(order, settings), session)
        if outcome is None:
            raise RuntimeError(f"order {order.order_no} changed under its row lock")
        return outcome
    in_full = notice.amount_cents == order.amount_cents and notice.currency == order.currency
    payable = order.status in ("pending", "expired") or (order.status == "rejected" and order.paid_at is None)
    recorded = _RECORD_PAYMENT.execute(conn, [{
        "provider": provider, "txn_id": notice.txn_id, "order_no": order.order_no,
        "amount_cents": notice.amount_cents, "currency": notice.currency,
        "status": "applied" if payable else "duplicate", "received_at": now}]).first()
    if recorded is None:
        metrics.payment_callbacks_rejected.labels(provider, "replay").inc()
        return "replay"
    if not in_full:
        raise _reject_callback(provider, "amount_mismatch", 422, "amount_mismatch",
                               "amount or currency does not match the order")  # the rollback drops the payment
    if not payable:
        # A second payment of a paid order: recorded for the merchant to refund, never delivered again.
        metrics.payment_callbacks_rejected.labels(provider, "duplicate_payment").inc()
        return "duplicate_payment"
    outbox.add(session, "delivery.order.paid", _paid_payload(order, provider, notice, now), order.order_no)
    after_commit(session, lambda: metrics.orders.labels("paid").inc())
    orm_order = session.get(Order, order.order_no)
    orm_order.status, orm_order.paid_at = "paid", now
    fulfil(session, settings, orm_order, now)
    return orm_order.status


def _pay_and_sell(conn, order, provider: str, notice, now: datetime, gate: str,
                  session: Session | None = None) -> str | None:
    """A pending order paid in full: it holds all its keys, so selling them is the status
    change. PostgreSQL does it in one statement; SQLite (always under the lock, ``session``
    given) records the payment (a replay stops there), updates the order and adds the events.
    No ``session``: ``conn`` is in autocommit. None: the order is no longer as read (decide
    again under the lock)."""
    delivered_at = utcnow() if gate == "approve" else None
    status = "delivered" if delivered_at else "paid"
    events = [outbox.row("delivery.order.paid", _paid_payload(order, provider, notice, now), order.order_no)]
    if delivered_at is not None:
        events.append(outbox.row("delivery.order.delivered", _delivered_payload(order, now, delivered_at),
                                 order.order_no))
    payment = dict(zip(_PAYMENT_COLUMNS, (provider, notice.txn_id, order.order_no, notice.amount_cents,
                                          notice.currency, "applied", now)))
    if conn.dialect.name == "postgresql":
        result = _PAY_AND_SELL[len(events)].execute(conn, {
            **{f"payment_{c}": v for c, v in payment.items()}, "seen_decision": order.risk_decision,
            "order_status": status, "paid_at": now, "delivered_at": delivered_at,
            **outbox.inline_params(events)}).first()
        if not result.current:
            return None
        recorded = result.recorded
    else:
        recorded = _RECORD_PAYMENT.execute(conn, [payment]).first() is not None
        if recorded:
            _SET_ORDER_PAID.execute(conn, {"key": order.order_no, "status": status, "paid_at": now,
                                           "delivered_at": delivered_at})
            for event in events:
                outbox.add_row(session, event)
    if not recorded:
        metrics.payment_callbacks_rejected.labels(provider, "replay").inc()
        return "replay"
    if session is not None:
        outbox.written(session)
    _when_committed(session, lambda: metrics.orders.labels("paid").inc())
    if delivered_at is None:
        return "paid"
    _observe_delivery(session, order, now, "payment")
    return "delivered"


def fulfil(session: Session, settings, order: Order, now: datetime, waited_for: str = "payment") -> None:
    """Deliver a paid order if risk allows and keys are there; else leave it waiting.
    ``waited_for``: what the delivery waited for, for the latency metric ("payment", "risk",
    "review"; an order that was out of stock counts as "stock")."""
    if order.status not in ("paid", "awaiting_stock"):
        return
    if order.status == "awaiting_stock":
        waited_for = "stock"
    gate = risk_gate(order, settings)
    if gate == "reject":
        refund(session, order, None, "rejected by risk review", now, final_status="rejected")
        return
    if gate != "approve":
        return
    held = set(session.scalars(select(OrderKey.position).where(OrderKey.order_no == order.order_no,
                                                                OrderKey.active.is_(True))))
    missing = [pos for pos in range(order.quantity) if pos not in held]
    if missing and not _allocate(session, order.order_no, order.product_id, missing, keep_going=True):
        if order.status != "awaiting_stock":
            order.status = "awaiting_stock"
            after_commit(session, lambda: metrics.orders.labels("awaiting_stock").inc())
        return
    delivered_at = utcnow()  # not `now`: that may be when the payment notice arrived
    order.status, order.delivered_at = "delivered", delivered_at
    _announce_delivery(session, order, order.paid_at, delivered_at, waited_for)


def _delivered_payload(order, paid_at: datetime, delivered_at: datetime) -> dict:
    """``order``: the ORM object or a row of the orders table, read alike."""
    return {
        "order_no": order.order_no, "product_id": order.product_id, "merchant_id": order.merchant_id,
        "quantity": order.quantity, "amount_cents": order.amount_cents, "cost_cents": order.cost_cents,
        "currency": order.currency, "fee_bps": order.fee_bps, "commission": order.commission,
        "provider": order.provider, "buyer_user_id": order.buyer_user_id, "ref_code": order.ref_code,
        "email": order.email, "paid_at": paid_at.isoformat(), "delivered_at": delivered_at.isoformat(),
    }


def _announce_delivery(session: Session, order, paid_at: datetime, delivered_at: datetime,
                       waited_for: str) -> None:
    outbox.add(session, "delivery.order.delivered", _delivered_payload(order, paid_at, delivered_at),
               order.order_no)
    _observe_delivery(session, order, paid_at, waited_for)


def _when_committed(session: Session | None, callback) -> None:
    """``callback`` once the change is committed: at the session's commit, or now when there is
    no session (the change was an autocommit statement, committed already)."""
    if session is None:
        callback()
    else:
        after_commit(session, callback)


def _observe_delivery(session: Session | None, order, paid_at: datetime, waited_for: str) -> None:
    amount, currency = order.amount_cents, order.currency

    def observe():  # from the payment notice's arrival to the commit that delivered the keys
        metrics.orders.labels("delivered").inc()
        # An operator's review or a restock can take hours; the label keeps those waits out
        # of the buyer-facing latency the alert watches.
        metrics.delivery_latency.labels(waited_for).observe((utcnow() - paid_at).total_seconds())
        metrics.revenue_cents.labels(currency).inc(amount)
    _when_committed(session, observe)


def fill_awaiting_orders(session: Session, settings, product_id: str, now: datetime) -> int:
    """Deliver orders paid while stock was out, first paid first served."""
    query = select(Order).where(Order.product_id == product_id, Order.status == "awaiting_stock") \
        .order_by(Order.paid_at).with_for_update()
    delivered = 0
    for order in session.scalars(query).all():
        fulfil(session, settings, order, now)
        if order.status != "delivered":
            break
        delivered += 1
    return delivered


_DECISION_STATE = DriverStatement(select(_O.c.status, _O.c.risk_decision).where(_O.c.order_no == bindparam("order_no"))
                                  .with_for_update())
_SET_DECISION = DriverStatement(update(_O).where(_O.c.order_no == bindparam("key"))
                                .values(risk_decision=bindparam("decision")))


def apply_risk_decision(session: Session, settings, payload: dict, now: datetime) -> None:
    from shared.inbox import NotReady
    state = _DECISION_STATE.execute(session, {"order_no": payload["order_no"]}).first()
    if state is None:
        raise NotReady(f"order {payload['order_no']} not seen yet")
    if state.risk_decision not in (None, "review"):
        return  # a final decision stands; a late or repeated one changes nothing
    decision = payload["decision"]
    if state.status in ("pending", "delivered", "partially_refunded", "refunded", "expired") \
            and not (decision == "reject" and state.status == "pending"):
        # Most decisions land on an order not yet paid (or, with screening off, already
        # delivered): nothing to sell or refund now, only the decision to keep.
        _SET_DECISION.execute(session, {"key": payload["order_no"], "decision": decision})
        return
    order = session.get(Order, payload["order_no"])
    order.risk_decision = decision
    if order.risk_decision == "reject" and order.status == "pending":
        order.status = "rejected"
        release_keys(session, order)
    else:
        fulfil(session, settings, order, now, waited_for="review" if state.risk_decision == "review" else "risk")


# -- after-sale ------------------------------------------------------------------------------

def replace_key(session: Session, order: Order, key_index: int, now: datetime) -> None:
    if order.status not in ("delivered", "partially_refunded"):
        raise ApiError(409, "not_delivered", "only a delivered order's keys can be replaced")
    rows = active_keys(session, order.order_no)
    if key_index >= len(rows):
        raise ApiError(422, "invalid", "no such key in this order", {"key_index": [f"must be below {len(rows)}"]})
    row = rows[key_index]
    if row.reusable:
        raise ApiError(409, "reusable_key", "a shared (reusable) key cannot be swapped for a fresh one")
    ids = claim_keys(session, order.product_id, 1)
    if not ids:
        raise ApiError(409, "out_of_stock", "no fresh key in stock to replace it with")
    row.active = False
    session.get(CardKey, row.key_id).retired_at = now
    session.add(OrderKey(order_no=order.order_no, position=row.position, key_id=ids[0], reusable=False, active=True))


def refund(session: Session, order: Order, quantity: int | None, reason: str, now: datetime,
           final_status: str | None = None, window_s: int | None = None) -> Refund:
    """``window_s``: the merchant's refund window after delivery; past it only the operator
    refunds (the money may already have been paid out, leaving the merchant a debt)."""
    if order.status not in PAID_STATUSES:
        raise ApiError(409, "not_refundable", f"an order that is {order.status} cannot be refunded")
    if window_s is not None and order.delivered_at is not None and now > order.delivered_at + timedelta(seconds=window_s):
        raise ApiError(409, "refund_window_closed", "the refund window of this order has closed; ask the operator")
    remaining = order.quantity - order.refunded_quantity
    quantity = remaining if quantity is None else quantity
    if quantity > remaining:
        raise ApiError(422, "invalid", f"only {remaining} keys left to refund", {"quantity": [f"at most {remaining}"]})
    delivered = order.delivered_at is not None
    if not delivered:
        if quantity != remaining:
            raise ApiError(422, "invalid", "an undelivered order is refunded whole", {"quantity": ["refund all of it"]})
        release_keys(session, order)
    total_quantity = order.refunded_quantity + quantity
    # Cumulative rounding: the last refund takes the remainder, so refunds add up to the amount.
    total_cents = order.amount_cents * total_quantity // order.quantity
    amount = total_cents - order.refunded_cents
    order.refunded_quantity, order.refunded_cents = total_quantity, total_cents
    order.status = final_status or ("refunded" if total_quantity == order.quantity else "partially_refunded")
    record = Refund(order_no=order.order_no, quantity=quantity, amount_cents=amount, reason=reason, created_at=now)
    session.add(record)
    session.flush()
    outbox.add(session, "delivery.order.refunded", {
        "order_no": order.order_no, "refund_id": record.id, "product_id": order.product_id,
        "merchant_id": order.merchant_id, "amount_cents": amount, "quantity": quantity,
        "currency": order.currency, "reason": reason, "delivered": delivered,
        "total_refunded_cents": total_cents, "total_refunded_quantity": total_quantity,
        "refunded_at": now.isoformat(),
    }, order.order_no)
    after_commit(session, lambda s=order.status: metrics.orders.labels(s).inc())
    return record


# -- stock -----------------------------------------------------------------------------------

def sold_last_week(session: Session, now: datetime) -> dict[str, int]:
    """Keys sold per product over the last 7 days (a scan of a week's orders: callers reuse it
    for minutes, not per stock check)."""
    week_ago = now - timedelta(days=7)
    return {product_id: int(total or 0) for product_id, total in session.execute(
        select(Order.product_id, func.sum(Order.quantity)).where(Order.delivered_at >= week_ago)
        .group_by(Order.product_id)).all()}


def sync_stock(session: Session, floor: int, now: datetime, sold: dict[str, int] | None = None) -> int:
    """Announce each product's stock when it changed, and low stock when it crosses the
    threshold: the last 7 days' sales (average daily sales × 7), at least ``floor``.
    ``sold``: ``sold_last_week`` computed earlier, or None to compute it now."""
    counts = dict(session.execute(select(KeyPool.product_id, func.count()).group_by(KeyPool.product_id)).all())
    unlimited = set(session.scalars(select(CardKey.product_id).where(
        CardKey.reusable.is_(True), CardKey.retired_at.is_(None)).distinct()))
    if sold is None:
        sold = sold_last_week(session, now)
    states = {s.product_id: s for s in session.scalars(select(StockState).with_for_update())}
    published = 0
    for product_id in session.scalars(select(Product.id)):
        available, is_unlimited = counts.get(product_id, 0), product_id in unlimited
        metrics.stock_available.labels(product_id).set(available)
        threshold = max(floor, int(sold.get(product_id) or 0))
        low = not is_unlimited and available < threshold
        state = states.get(product_id)
        if state is None:
            state = StockState(product_id=product_id, available=-1, unlimited=False, low=False)
            session.add(state)
        if (state.available, state.unlimited) != (available, is_unlimited):
            outbox.add(session, "delivery.stock.changed", {
                "product_id": product_id, "available": available, "unlimited": is_unlimited,
                "low": low, "as_of": now.isoformat()}, product_id)
            published += 1
        if low and not state.low:
            outbox.add(session, "delivery.stock.low", {
                "product_id": product_id, "available": available, "threshold": threshold,
                "as_of": now.isoformat()}, product_id)
            published += 1
        state.available, state.unlimited, state.low = available, is_unlimited, low
    return published


def forget_old_rate_windows(session: Session, now: datetime, window_s: int = 60) -> int:
    current = int(now.timestamp()) // window_s
    return session.execute(delete(RateLimit).where(RateLimit.window_start < current - 1)).rowcount


def rate_limited(session: Session, key: str, limit: int, now: datetime, window_s: int = 60) -> bool:
    """Count one hit in a fixed window shared by every API process; True once over ``limit``."""
    window = int(now.timestamp()) // window_s
    row = session.get(RateLimit, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(RateLimit(key=key, window_start=window, count=0))
        except IntegrityError:  # another process created it first: take its row
            pass
        row = session.get(RateLimit, key, with_for_update=True, populate_existing=True)
    if row.window_start != window:
        row.window_start, row.count = window, 0
    row.count += 1
    session.flush()
    return row.count > limit
