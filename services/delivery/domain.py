"""Delivery rules, free of Flask and HTTP: reservation, payment, fulfilment, expiry, refunds,
replacement. Each rule is written once here; where PostgreSQL and SQLite need different SQL
to make a change atomic, the rule calls ``storage`` (one interface, both backends).

A one-time key is claimed by deleting it from ``key_pool``, and the claimed count is checked
against what was asked: two buyers can never claim the same row, and a partial claim rolls
back. ``order_keys`` carries a unique index on one-time keys as the last line of defence.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import metrics
from shared.auth import hash_secret
from shared.db import InsertIgnoringConflicts, after_commit
from shared.errors import Conflict, DomainError, Invalid, NotFound, OutOfStock, Unavailable
from shared.events import utcnow
from shared.projection import merchant_for_token as projected_merchant_for_token
from shared.projection import replace_key_hashes, upsert_newer

from . import storage
from .mail import MailContent, MailError, compose, mails_total
from .models import (CardKey, KeyPool, KeyReport, Mail, Merchant, MerchantKey, Order, OrderKey, Payment, Product, RateLimit,
                     Refund, StockState, outbox)
from .payments import ProviderError, RefundRequest, RefundResult
from .vault import Vault

log = logging.getLogger("linkshop.delivery.mail")

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
                    fee_bps=p.get("fee_bps", 200), mail_keys=p.get("mail_keys", True)):
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


def _refusal(terms, quantity: int, currencies: frozenset[str] | None = None) -> Invalid | None:
    if terms is None or terms.status != "active" or terms.merchant_status != "active":
        return Invalid("no such product on sale", {"product_id": ["unknown product"]}, code="unknown_product")
    if currencies is not None and terms.currency not in currencies:
        return Invalid(f"this payment provider does not take {terms.currency}",
                       {"provider": [f"takes only {', '.join(sorted(currencies))}"]}, code="currency_not_supported")
    if quantity > terms.max_per_order:
        return Invalid(f"at most {terms.max_per_order} per order",
                       {"quantity": [f"must be at most {terms.max_per_order}"]})
    return None


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
        provider=provider, pay_type=data.get("pay_type"), payment_ref=None, payment_checked_at=None,
        locale=data.get("locale"),
        access_token_hash=hash_secret(token),
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


def create_order(db, settings, data: dict, client: dict, provider: str,
                 now: datetime, currencies: frozenset[str] | None = None) -> tuple[SimpleNamespace, str]:
    """Reserve ``quantity`` keys for a new pending order, all or none, at the product's current
    terms, to be paid through ``provider`` (which takes ``currencies``, None: any). The terms
    come from this process's cache; the storage writes only if they are still current, else
    they are read again. Returns the new row's values, for the response (a plain namespace:
    an ORM object would cost its instrumentation for nothing), and the buyer's access token."""
    store = storage.of(db)
    product_id, quantity = data["product_id"], data["quantity"]
    terms = store.terms(db, product_id)
    if terms is None or _refusal(terms, quantity, currencies):  # never refuse on what may be stale
        terms = store.terms(db, product_id, fresh=True)
    for _ in range(3):  # terms changing under an order three times running is rare enough
        refusal = _refusal(terms, quantity, currencies)
        if refusal is not None:
            raise refusal
        values, token, created = _new_order(terms, data, client, provider, now, settings)
        placed = store.place_order(db, values, created, terms)
        if placed == storage.PLACED:
            metrics.orders.labels("pending").inc()
            return SimpleNamespace(**values, title=terms.title), token
        if placed == storage.OUT_OF_STOCK:
            raise OutOfStock("not enough keys in stock for this order")
        terms = store.terms(db, product_id, fresh=True)  # changed since this process cached it
    raise Unavailable("the product changed while ordering; try again")


def abandon_order(session: Session, order_no: str) -> None:
    """The provider could not start the payment: the order ends, its keys go back on sale."""
    order = session.get(Order, order_no, with_for_update=True)
    if order is not None and order.status == "pending":
        order.status = "expired"
        storage.of(session).release_keys(session, order.order_no, order.product_id)


def set_payment_ref(session: Session, order_no: str, ref: str) -> None:
    session.execute(update(Order).where(Order.order_no == order_no).values(payment_ref=ref))


def expire_reservations(session: Session, now: datetime, limit: int = 500) -> int:
    store = storage.of(session)
    orders = store.lock_expired(session, now, limit)
    for order in orders:
        order.status = "expired"
        store.release_keys(session, order.order_no, order.product_id)
    if orders:
        after_commit(session, lambda n=len(orders): metrics.orders.labels("expired").inc(n))
    return len(orders)


# -- payment and fulfilment ------------------------------------------------------------------

def risk_gate(order: Order, settings) -> str:
    """The seam where risk plugs in (design §5): approve, review, reject, or wait for it."""
    if order.risk_decision in ("approve", "review", "reject"):
        return order.risk_decision
    return "wait" if settings.risk_required else "approve"


def _paid_payload(order, provider: str, notice, now: datetime) -> dict:
    return {"order_no": order.order_no, "amount_cents": order.amount_cents, "currency": order.currency,
            "provider": provider, "provider_txn_id": notice.txn_id, "paid_at": now.isoformat(),
            "payer_account": getattr(notice, "payer_account", None)}


def _payment_row(provider: str, notice, order_no: str, status: str, now: datetime) -> dict:
    return {"provider": provider, "txn_id": notice.txn_id, "order_no": order_no,
            "amount_cents": notice.amount_cents, "currency": notice.currency, "status": status, "received_at": now}


# What a payment notice (or a provider's answer to a query) did, as counted in
# ``linkshop_payment_notices_total{outcome}``: the order's new status, or one of these.
TAKEN = ("paid", "awaiting_stock", "delivered", "rejected", "replay", "duplicate_payment", "not_paid")


def take_notice(db, settings, provider: str, notice, now: datetime, counter=None) -> str:
    """``apply_payment``, counted: every outcome, and every refusal by its code, in
    ``counter`` (``linkshop_payment_notices_total`` by default) under ``provider``."""
    counter = counter or metrics.payment_notices
    try:
        outcome = apply_payment(db, settings, provider, notice, now)
    except DomainError as refused:
        counter.labels(provider, refused.code).inc()
        raise
    counter.labels(provider, outcome).inc()
    return outcome


def apply_payment(db, settings, provider: str, notice, now: datetime) -> str:
    """Apply a verified payment notice; returns the outcome (``TAKEN``) or raises why the
    notice was refused (unknown order, another provider's order, amount or currency wrong).

    The common case is a pending order paid in full, whose keys are all reserved: selling
    them is a status change, which the storage makes in one step if the order is still as
    read (``_sell_pending``). Anything else, or an order that changed in between, is decided
    under a lock on the order row (``_apply_payment_locked``)."""
    order = storage.of(db).read_order(db, notice.order_no)
    if _sells_at_once(order, provider, notice, settings):
        outcome = _sell_pending(db, settings, order, provider, notice, now)
        if outcome is not None:
            return outcome
    with db.write() as session:
        return _apply_payment_locked(session, settings, provider, notice, now)


def _sells_at_once(order, provider: str, notice, settings) -> bool:
    return (order is not None and order.provider == provider and notice.status == "paid"
            and order.status == "pending" and notice.amount_cents == order.amount_cents
            and notice.currency == order.currency and risk_gate(order, settings) != "reject")


def _sell_pending(db, settings, order, provider: str, notice, now: datetime) -> str | None:
    """A pending order paid in full: paid, and delivered at once if risk approved. None: the
    order is no longer as read (decide again under the lock)."""
    delivered_at = utcnow() if risk_gate(order, settings) == "approve" else None
    events = [outbox.row("delivery.order.paid", _paid_payload(order, provider, notice, now), order.order_no)]
    if delivered_at is not None:
        events.append(outbox.row("delivery.order.delivered", _delivered_payload(order, now, delivered_at),
                                 order.order_no))
    current, recorded = storage.of(db).pay_pending(
        db, _payment_row(provider, notice, order.order_no, "applied", now), order.risk_decision,
        "delivered" if delivered_at else "paid", now, delivered_at, events)
    if not current:
        return None
    if not recorded:
        return "replay"
    metrics.orders.labels("paid").inc()
    if delivered_at is None:
        return "paid"
    _observe_delivery(None, order, now, "payment")
    return "delivered"


def _apply_payment_locked(session: Session, settings, provider: str, notice, now: datetime) -> str:
    store = storage.of(session)
    order = store.lock_order(session, notice.order_no)
    if order is None:
        raise NotFound("order not found", code="unknown_order")
    if order.provider != provider:
        raise Invalid("the order was not created for this provider", code="wrong_provider")
    if notice.status != "paid":
        return "not_paid"
    in_full = notice.amount_cents == order.amount_cents and notice.currency == order.currency
    payable = order.status in ("pending", "expired") or (order.status == "rejected" and order.paid_at is None)
    if not store.record_payment(session, _payment_row(provider, notice, order.order_no,
                                                      "applied" if payable else "duplicate", now)):
        return "replay"
    if not in_full:  # the rollback drops the payment
        raise Invalid("amount or currency does not match the order", code="amount_mismatch")
    if not payable:
        # A second payment of a paid order: recorded for the merchant to refund, never delivered again.
        return "duplicate_payment"
    outbox.add(session, "delivery.order.paid", _paid_payload(order, provider, notice, now), order.order_no)
    after_commit(session, lambda: metrics.orders.labels("paid").inc())
    orm_order = session.get(Order, order.order_no)
    orm_order.status, orm_order.paid_at = "paid", now
    fulfil(session, settings, orm_order, now)
    return orm_order.status


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
    if missing and not storage.of(session).allocate(session, order.order_no, order.product_id, missing,
                                                    keep_going=True):
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


def apply_risk_decision(session: Session, settings, payload: dict, now: datetime) -> None:
    from shared.inbox import NotReady
    store = storage.of(session)
    state = store.lock_state(session, payload["order_no"])
    if state is None:
        raise NotReady(f"order {payload['order_no']} not seen yet")
    if state.risk_decision not in (None, "review"):
        return  # a final decision stands; a late or repeated one changes nothing
    decision = payload["decision"]
    if state.status in ("pending", "delivered", "partially_refunded", "refunded", "expired") \
            and not (decision == "reject" and state.status == "pending"):
        # Most decisions land on an order not yet paid (or, with screening off, already
        # delivered): nothing to sell or refund now, only the decision to keep.
        store.set_risk_decision(session, payload["order_no"], decision)
        return
    order = session.get(Order, payload["order_no"])
    order.risk_decision = decision
    if order.risk_decision == "reject" and order.status == "pending":
        order.status = "rejected"
        store.release_keys(session, order.order_no, order.product_id)
    else:
        fulfil(session, settings, order, now, waited_for="review" if state.risk_decision == "review" else "risk")


# -- after-sale ------------------------------------------------------------------------------

def replace_key(session: Session, order: Order, key_index: int, now: datetime) -> None:
    """The new key is mailed to the buyer who was mailed the order (a ``replacement`` mail,
    written in this transaction, sent by the worker): the order's ``delivered`` mail says that
    buyers get e-mail here, so the API needs no mail settings of its own."""
    if order.status not in ("delivered", "partially_refunded"):
        raise Conflict("only a delivered order's keys can be replaced", code="not_delivered")
    rows = active_keys(session, order.order_no)
    if key_index >= len(rows):
        raise Invalid("no such key in this order", {"key_index": [f"must be below {len(rows)}"]})
    row = rows[key_index]
    if row.reusable:
        raise Conflict("a shared (reusable) key cannot be swapped for a fresh one", code="reusable_key")
    ids = storage.of(session).claim_keys(session, order.product_id, 1)
    if not ids:
        raise OutOfStock("no fresh key in stock to replace it with")
    row.active = False
    session.get(CardKey, row.key_id).retired_at = now
    fresh = OrderKey(order_no=order.order_no, position=row.position, key_id=ids[0], reusable=False, active=True)
    session.add(fresh)
    if session.scalar(select(Mail.id).where(Mail.order_no == order.order_no, Mail.kind == "delivered")) is not None:
        session.flush()
        queue_mail(session, order.order_no, "replacement", now, ref=str(fresh.id))
    for report in session.scalars(select(KeyReport).where(KeyReport.order_no == order.order_no,
                                                          KeyReport.position == row.position,
                                                          KeyReport.status == "open")):
        report.status, report.resolved_at = "replaced", now


def report_key(session: Session, order: Order, key_index: int, reason: str, now: datetime) -> KeyReport:
    """The buyer says a delivered key does not work: the merchant sees it (and is told by
    ``delivery.key.reported``) and can replace the key, which closes the report."""
    if order.status not in ("delivered", "partially_refunded"):
        raise Conflict("only a delivered order's keys can be reported", code="not_delivered")
    rows = active_keys(session, order.order_no)
    if key_index >= len(rows):
        raise Invalid("no such key in this order", {"key_index": [f"must be below {len(rows)}"]})
    row = rows[key_index]
    if session.scalar(select(KeyReport.id).where(KeyReport.order_no == order.order_no,
                                                 KeyReport.position == row.position, KeyReport.status == "open")):
        raise Conflict("this key is reported already; the merchant will answer", code="already_reported")
    report = KeyReport(order_no=order.order_no, merchant_id=order.merchant_id, position=row.position,
                       key_id=row.key_id, reason=reason, status="open", created_at=now)
    session.add(report)
    session.flush()
    outbox.add(session, "delivery.key.reported", {
        "report_id": report.id, "order_no": order.order_no, "merchant_id": order.merchant_id,
        "product_id": order.product_id, "key_index": key_index, "reason": reason,
        "reported_at": now.isoformat()}, order.order_no)
    return report


def key_reports(session: Session, order_no: str) -> list[dict]:
    """An order's reports, each with the index of its key among the order's keys today."""
    positions = [r.position for r in active_keys(session, order_no)]
    return [{"report_id": r.id, "key_index": positions.index(r.position) if r.position in positions else None,
             "reason": r.reason, "status": r.status, "created_at": r.created_at.isoformat(),
             "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None}
            for r in session.scalars(select(KeyReport).where(KeyReport.order_no == order_no).order_by(KeyReport.id))]


def refund(session: Session, order: Order, quantity: int | None, reason: str, now: datetime,
           final_status: str | None = None, window_s: int | None = None) -> Refund:
    """``window_s``: the merchant's refund window after delivery; past it only the operator
    refunds (the money may already have been paid out, leaving the merchant a debt)."""
    if order.status not in PAID_STATUSES:
        raise Conflict(f"an order that is {order.status} cannot be refunded", code="not_refundable")
    if window_s is not None and order.delivered_at is not None and now > order.delivered_at + timedelta(seconds=window_s):
        raise Conflict("the refund window of this order has closed; ask the operator", code="refund_window_closed")
    remaining = order.quantity - order.refunded_quantity
    quantity = remaining if quantity is None else quantity
    if quantity > remaining:
        raise Invalid(f"only {remaining} keys left to refund", {"quantity": [f"at most {remaining}"]})
    delivered = order.delivered_at is not None
    if not delivered:
        if quantity != remaining:
            raise Invalid("an undelivered order is refunded whole", {"quantity": ["refund all of it"]})
        storage.of(session).release_keys(session, order.order_no, order.product_id)
    total_quantity = order.refunded_quantity + quantity
    # Cumulative rounding: the last refund takes the remainder, so refunds add up to the amount.
    total_cents = order.amount_cents * total_quantity // order.quantity
    amount = total_cents - order.refunded_cents
    order.refunded_quantity, order.refunded_cents = total_quantity, total_cents
    order.status = final_status or ("refunded" if total_quantity == order.quantity else "partially_refunded")
    # The money goes back the way it came: the worker asks the provider (``send_refunds``).
    paid = order.paid_at is not None and amount > 0
    record = Refund(order_no=order.order_no, quantity=quantity, amount_cents=amount, reason=reason, created_at=now,
                    provider=order.provider if paid else None, status="requested" if paid else "not_needed",
                    attempts=0, next_attempt_at=now if paid else None)
    session.add(record)
    session.flush()
    if paid:
        record.refund_no = f"{order.order_no}R{record.id}"
    outbox.add(session, "delivery.order.refunded", {
        "order_no": order.order_no, "refund_id": record.id, "product_id": order.product_id,
        "merchant_id": order.merchant_id, "amount_cents": amount, "quantity": quantity,
        "currency": order.currency, "reason": reason, "delivered": delivered,
        "total_refunded_cents": total_cents, "total_refunded_quantity": total_quantity,
        "refunded_at": now.isoformat(), "refund_no": record.refund_no, "provider": record.provider,
        "provider_status": record.status,
    }, order.order_no)
    after_commit(session, lambda s=order.status: metrics.orders.labels(s).inc())
    return record


# -- money back through the provider ---------------------------------------------------------

# After each failed attempt the next waits longer; past the last the refund is ``failed`` and
# waits for a person (merchant or operator) to retry it.
REFUND_BACKOFF_S = (10, 30, 60, 300, 900, 1800, 3600, 3600)
REFUND_LEASE_S = 120  # a worker that died mid-call leaves the refund to be tried again after this
REFUND_BATCH = 20


def lease_due_refunds(session: Session, now: datetime,
                      limit: int = REFUND_BATCH) -> list[tuple[str, RefundRequest]]:
    """The refunds due to be sent, (provider, request) each, leased to this caller for
    ``REFUND_LEASE_S`` (so two workers do not send one at once) and counted as an attempt.
    The provider is called after this transaction commits, never inside it."""
    query = select(Refund).where(Refund.status == "requested", Refund.next_attempt_at <= now) \
        .order_by(Refund.next_attempt_at).limit(limit).with_for_update(skip_locked=True)  # SQLite: one writer anyway
    requests = []
    for record in session.scalars(query).all():
        record.attempts += 1
        record.next_attempt_at = now + timedelta(seconds=REFUND_LEASE_S)
        order = session.get(Order, record.order_no)
        txn_id = session.scalar(select(Payment.txn_id).where(
            Payment.order_no == record.order_no, Payment.provider == record.provider, Payment.status == "applied")
            .order_by(Payment.id).limit(1))
        requests.append((record.provider, RefundRequest(
            refund_no=record.refund_no, order_no=record.order_no, txn_id=txn_id or "",
            amount_cents=record.amount_cents, order_amount_cents=order.amount_cents, currency=order.currency,
            reason=record.reason, payment_ref=order.payment_ref)))
    return requests


def _refund_event(session: Session, record: Refund, status: str) -> None:
    outbox.add(session, f"delivery.refund.{status}", {
        "order_no": record.order_no, "refund_id": record.id, "refund_no": record.refund_no,
        "provider": record.provider, "amount_cents": record.amount_cents, "attempts": record.attempts,
        "error": record.last_error, "at": (record.settled_at or utcnow()).isoformat()}, record.order_no)


def record_refund_answer(session: Session, refund_no: str, result: RefundResult | None, error: str | None,
                         now: datetime) -> str:
    """What the provider said to a refund: ``result`` (accepted, or refused for good), or
    ``error`` when it could not be asked (tried again later, until the attempts run out).
    Returns the refund's status."""
    record = session.scalar(select(Refund).where(Refund.refund_no == refund_no).with_for_update())
    if record is None or record.status != "requested":
        return record.status if record else "unknown"
    if result is not None and result.ok:
        record.status, record.settled_at, record.last_error = "succeeded", now, None
        record.provider_refund_id = result.provider_refund_id
        _refund_event(session, record, "succeeded")
    elif result is not None or record.attempts >= len(REFUND_BACKOFF_S):
        record.status, record.settled_at, record.refused = "failed", now, result is not None
        record.last_error = ((result.error if result else error) or "refused")[:300]
        _refund_event(session, record, "failed")
    else:
        record.last_error = (error or "")[:300]
        record.next_attempt_at = now + timedelta(seconds=REFUND_BACKOFF_S[record.attempts - 1])
    status = record.status
    if status != "requested":
        after_commit(session, lambda: metrics.provider_refunds.labels(record.provider, status).inc())
    return status


def retry_refund(session: Session, record: Refund, now: datetime) -> None:
    """A person asks again for a refund the provider refused or never answered."""
    if record.status != "failed":
        raise Conflict(f"only a failed refund can be retried; this one is {record.status}", code="not_failed")
    if record.refused:  # a new number: the provider would repeat its refusal of the old one
        record.refund_no = f"{record.order_no}R{record.id}-{secrets.token_hex(3)}"
    # Never answered: the same number, so a refund the provider did make is not made twice.
    record.status, record.attempts, record.next_attempt_at, record.settled_at = "requested", 0, now, None
    record.refused = False


def send_refunds(db, providers: dict, now_fn=utcnow, limit: int = REFUND_BATCH) -> int:
    """Send the due refunds to their providers, one by one, outside any transaction."""
    with db.write() as session:
        due = lease_due_refunds(session, now_fn(), limit)
    for provider_name, request in due:
        provider = providers.get(provider_name)
        result, error = None, None
        if provider is None:
            error = f"the payment provider {provider_name} is not enabled"
        elif not request.txn_id:
            error = "no applied payment found for this order"
        else:
            try:
                result = provider.refund(request)
            except ProviderError as exc:
                error = str(exc)
        with db.write() as session:
            record_refund_answer(session, request.refund_no, result, error, now_fn())
    return len(due)


# -- the buyer's e-mail ----------------------------------------------------------------------

# After each failed attempt the next waits longer; past the last the mail is ``failed``.
MAIL_BACKOFF_S = (10, 30, 120, 600, 1800, 3600, 7200)
MAIL_LEASE_S = 120  # a worker that died mid-send leaves the mail to be tried again after this
MAIL_BATCH = 20
_QUEUE_MAIL = InsertIgnoringConflicts(Mail.__table__, ["order_no", "kind", "ref", "status", "attempts",
                                                       "next_attempt_at", "created_at"],
                                      key=["order_no", "kind", "ref"], returning=["id"])


def queue_mail(session: Session, order_no: str, kind: str, now: datetime, ref: str = "") -> bool:
    """Write a mail for the worker to send (``delivered``: the order's keys; ``replacement``:
    the new key, ``ref`` its ``order_keys`` id). False: this mail was written already (the
    unique order, kind and ref decide, not a look-up)."""
    return _QUEUE_MAIL.execute(session, [{"order_no": order_no, "kind": kind, "ref": ref, "status": "queued",
                                          "attempts": 0, "next_attempt_at": now, "created_at": now}]).first() is not None


def order_link(public_url: str, vault: Vault, order_no: str) -> str:
    """The buyer's order page, with the link token their e-mail carries (``Vault.order_link_token``)."""
    return f"{public_url.rstrip('/')}/order/{order_no}?token={vault.order_link_token(order_no)}"


def _mail_content(session: Session, vault: Vault, public_url: str, mail: Mail) -> MailContent | None:
    """What the mail says (keys decrypted), or None when there is nothing to send any more
    (a replaced key replaced again: the later mail carries the newer key)."""
    order = session.get(Order, mail.order_no)
    product = session.get(Product, order.product_id)
    merchant = session.get(Merchant, order.merchant_id)
    with_keys = merchant is None or merchant.mail_keys is not False
    key_index = None
    if mail.kind == "replacement":
        row = session.get(OrderKey, int(mail.ref))
        if row is None or not row.active:
            return None
        key_index = [r.id for r in active_keys(session, order.order_no)].index(row.id) + 1
        keys = [vault.decrypt(order.product_id, session.get(CardKey, row.key_id).secret)] if with_keys else None
    else:
        keys = reveal_keys(session, vault, order) if with_keys else None
    return MailContent(kind=mail.kind, mail_id=mail.id, order_no=order.order_no, to=order.email, locale=order.locale,
                       title=product.title if product else order.product_id, quantity=order.quantity,
                       instructions=(product.instructions or "") if product else "",
                       link=order_link(public_url, vault, order.order_no), keys=keys, key_index=key_index)


def lease_due_mails(session: Session, vault: Vault, sender: str, public_url: str, now: datetime,
                    limit: int = MAIL_BATCH) -> list[tuple[int, str, str, object]]:
    """The mails due, composed, (id, order_no, kind, message) each, leased to this caller for
    ``MAIL_LEASE_S`` and counted as an attempt. Sent after this transaction commits."""
    query = select(Mail).where(Mail.status == "queued", Mail.next_attempt_at <= now) \
        .order_by(Mail.next_attempt_at).limit(limit).with_for_update(skip_locked=True)  # SQLite: one writer anyway
    due = []
    for mail in session.scalars(query).all():
        mail.attempts += 1
        mail.next_attempt_at = now + timedelta(seconds=MAIL_LEASE_S)
        try:
            content = _mail_content(session, vault, public_url, mail)
        except Exception as exc:  # a key the vault cannot open: never the key or the message in the error
            _mail_outcome(mail, f"could not compose: {type(exc).__name__}", now)
            continue
        if content is None:
            mail.status, mail.last_error = "skipped", "the key was replaced again"
            continue
        due.append((mail.id, mail.order_no, mail.kind, compose(content, sender, now)))
    return due


def _mail_outcome(mail: Mail, error: str | None, now: datetime) -> str:
    if error is None:
        mail.status, mail.sent_at, mail.last_error = "sent", now, None
    elif mail.attempts > len(MAIL_BACKOFF_S):
        mail.status, mail.last_error = "failed", error[:300]
    else:
        mail.last_error = error[:300]
        mail.next_attempt_at = now + timedelta(seconds=MAIL_BACKOFF_S[mail.attempts - 1])
    return mail.status


def record_mail_result(session: Session, mail_id: int, error: str | None, now: datetime) -> str:
    """Sent (``error`` None), or to be tried again after the backoff, or ``failed`` after the
    last attempt. Returns the mail's status."""
    mail = session.get(Mail, mail_id, with_for_update=True)
    if mail is None or mail.status != "queued":
        return mail.status if mail else "unknown"
    return _mail_outcome(mail, error, now)


def send_mails(db, vault: Vault, transport, sender: str, public_url: str, now_fn=utcnow,
               limit: int = MAIL_BATCH) -> int:
    """Send the due mails one by one, outside any transaction. Logs the order number and the
    outcome, never the message."""
    with db.write() as session:
        due = lease_due_mails(session, vault, sender, public_url, now_fn(), limit)
    for mail_id, order_no, kind, message in due:
        error = None
        try:
            transport.send(message)
        except MailError as exc:
            error = str(exc)
        del message
        with db.write() as session:
            status = record_mail_result(session, mail_id, error, now_fn())
        mails_total.labels(kind, status if status != "queued" else "retry").inc()
        if error is None:
            log.info("%s mail for order %s sent", kind, order_no)
        else:
            log.warning("%s mail for order %s not sent (%s): %s", kind, order_no,
                        "will retry" if status == "queued" else status, error)
    return len(due)


# -- payments whose notice never came (掉单) ---------------------------------------------------

def orders_to_check(session: Session, providers, now: datetime, after_s: float, every_s: float,
                    limit: int = 50) -> list[tuple[str, str, str | None]]:
    """Pending orders at least ``after_s`` old whose provider can be asked, not asked in the
    last ``every_s``: (order_no, provider, payment_ref), each marked as asked now."""
    query = select(Order).where(Order.status == "pending", Order.provider.in_(list(providers)),
                                Order.created_at <= now - timedelta(seconds=after_s),
                                (Order.payment_checked_at.is_(None))
                                | (Order.payment_checked_at <= now - timedelta(seconds=every_s))) \
        .order_by(Order.expires_at).limit(limit).with_for_update(skip_locked=True)  # SQLite: one writer anyway
    found = []
    for order in session.scalars(query).all():
        order.payment_checked_at = now
        found.append((order.order_no, order.provider, order.payment_ref))
    return found


def recover_payment(db, settings, provider, order_no: str, ref: str | None, now_fn=utcnow) -> str | None:
    """Ask ``provider`` about the order's payment and apply a paid answer exactly as a notice
    would (counted in ``linkshop_payment_recoveries_total``). None: not paid as far as the
    provider knows. ``ProviderError`` when it could not be asked."""
    notice = provider.query(order_no, ref)
    if notice is None or notice.status != "paid":
        return None
    if notice.order_no != order_no:
        raise ProviderError(f"{provider.name} answered about another order")
    try:
        return take_notice(db, settings, provider.name, notice, now_fn(), counter=metrics.payment_recoveries)
    except DomainError as refused:
        return refused.code


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
