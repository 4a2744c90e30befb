"""One inbox batch (one transaction) against the same events one by one: risk's handlers write
orders and products with statements and read them as objects, and neither may miss what the
other did earlier in the transaction. Used on SQLite (test_batches.py) and on PostgreSQL
(tests/integration/test_risk_real.py), where the statements run as DriverStatements."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from services.risk.domain import email_hash
from services.risk.events import handlers
from services.risk.models import Base, Decision, Earning, Fingerprint, Order, Product, inbox, outbox
from shared.db import Database
from shared.events import make_envelope
from shared.inbox import Consumer

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _created(order_no, t, email, device, ip, buyer_user_id=None, ref_code=None):
    return ("delivery.order.created", {
        "order_no": order_no, "product_id": "p1", "merchant_id": "m1", "quantity": 1, "amount_cents": 1000,
        "currency": "CNY", "email": email, "buyer_user_id": buyer_user_id, "ref_code": ref_code,
        "client": {"ip": ip, "device_id": device, "user_agent": "UA"}, "created_at": at(t)})


def _paid(order_no, t, payer):
    return ("delivery.order.paid", {"order_no": order_no, "amount_cents": 1000, "currency": "CNY",
                                    "provider": "sandbox", "provider_txn_id": f"t{order_no}{t}", "paid_at": at(t),
                                    "payer_account": payer})


def _delivered(order_no, t, paid_t):
    return ("delivery.order.delivered", {"order_no": order_no, "product_id": "p1", "merchant_id": "m1",
                                         "quantity": 1, "amount_cents": 1000, "email": "x@example.com",
                                         "paid_at": at(paid_t), "delivered_at": at(t)})


def _product(version, price_cents):
    return ("catalog.product.upserted", {"product_id": "p1", "merchant_id": "m1", "title": "T", "status": "active",
                                         "price_cents": price_cents, "max_per_order": 10, "version": version})


def stream() -> list[tuple[str, dict]]:
    """u1 pays an order of their own with card-9; then a guest order (A) through u1's link,
    whose line accrues before its payment with card-9 (u1's card: the line is held once the
    payment shows it); another guest order (B); a product update between the orders;
    and a second delivery.order.paid and .delivered (new event ids, other times and payer)
    that must change nothing."""
    return [
        _product(1, 1000),
        ("referral.user.registered", {
            "user_id": "u1", "parent_id": None, "ancestors": [], "email_hash": email_hash("u1@example.com"),
            "client": {"ip": "81.2.69.10", "device_id": "dev-u1"}, "registered_at": at(-86400 * 60)}),
        _created("W", 0, "u1@example.com", "dev-u1", "81.2.69.10", buyer_user_id="u1"),
        _paid("W", 30, "card-9"),
        _delivered("W", 31, 30),
        _created("A", 100, "a@example.com", "dev-a", "81.2.70.1", ref_code="inv-u1"),
        _created("B", 110, "b@example.com", "dev-b", "81.2.70.2"),
        _product(2, 1200),
        ("referral.commission.accrued", {
            "order_no": "A", "merchant_id": "m1", "product_id": "p1", "buyer_user_id": None, "amount_cents": 1000,
            "lines": [{"user_id": "u1", "level": 1, "rate_bps": 800, "amount_cents": 80}]}),
        _paid("A", 130, "card-9"),
        _paid("B", 140, "card-2"),
        _delivered("A", 131, 130),
        _delivered("B", 141, 140),
        _paid("A", 500, "card-7"),  # the same payment announced again, with other values
        _delivered("B", 600, 590),
    ]


def apply(db: Database, events: list[tuple[str, dict]], *, one_batch: bool) -> None:
    consumer = Consumer("risk", db, inbox, handlers)
    envelopes = [make_envelope(type_, payload, producer=type_.split(".")[0]) for type_, payload in events]
    for i, envelope in enumerate(envelopes):  # the same clock both ways (a line accrued early is dated by it)
        envelope["occurred_at"] = at(1000 + i)
    for chunk in [envelopes] if one_batch else [[e] for e in envelopes]:
        results = consumer.handle_batch(chunk)
        assert results == ["processed"] * len(chunk), results


def state(db: Database) -> dict:
    """Everything risk keeps, without generated ids and event ids."""
    def rows(model, order_by, skip=("id",)):
        table = model.__table__
        return [{k: v for k, v in row._mapping.items() if k not in skip}
                for row in s.execute(select(table).order_by(*[table.c[c] for c in order_by])).all()]
    with db.read() as s:
        published = [(row.type, json.loads(row.body)["payload"])
                     for row in s.execute(select(outbox.table).order_by(outbox.table.c.id)).all()]
        return {"orders": rows(Order, ["order_no"]), "products": rows(Product, ["id"]),
                "decisions": rows(Decision, ["kind", "subject"]), "earnings": rows(Earning, ["order_no", "level"]),
                "fingerprints": rows(Fingerprint, ["user_id", "kind", "value"]), "published": published}


def fresh(url: str) -> Database:
    db = Database(url, Base.metadata)
    db.create_all()
    return db


def check(one_by_one: Database, batched: Database) -> dict:
    """Apply the stream both ways; the same state, and the state the stream means."""
    apply(one_by_one, stream(), one_batch=False)
    apply(batched, stream(), one_batch=True)
    expected, got = state(one_by_one), state(batched)
    assert got == expected
    orders = {o["order_no"]: o for o in got["orders"]}
    assert (orders["A"]["payer_account"], orders["A"]["paid_at"]) == ("card-9", T0 + timedelta(seconds=130))
    assert orders["B"]["delivered_at"] == T0 + timedelta(seconds=141)
    assert orders["B"]["paid_at"] == T0 + timedelta(seconds=140)
    assert [o["delivered_at"] is not None for o in got["orders"]] == [True, True, True]
    product = got["products"][0]  # counted by statements, described by the catalog's events
    assert (product["orders_seen"], product["amount_sum_cents"], product["price_cents"], product["version"]) == \
        (3, 3000, 1200, 2)
    flagged = [d for d in got["decisions"] if d["kind"] == "commission"]
    assert [(d["subject"], d["decision"]) for d in flagged] == [("A:u1", "review")]
    assert "the buyer shares a payment account with u1" in flagged[0]["reasons"][0]["reason"]
    assert [e["flagged"] for e in got["earnings"]] == [True]
    assert [t for t, _ in got["published"]] == ["risk.order.assessed"] * 3 + ["risk.commission.flagged"]
    return got
