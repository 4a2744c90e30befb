"""Delivery's one-statement hot paths on real PostgreSQL, called directly on a database of
their own (migrated like the stack's): an order placed with cached terms, a shortfall, a
payment whose order changed between its read and its statement."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, text

from scripts import stack as stackmod
from services.delivery import domain
from services.delivery.models import Base, CardKey, KeyPool, Order, Payment, outbox
from services.delivery.payments import Notice
from shared.db import Database
from shared.errors import ApiError
from services.manage import upgrade

SETTINGS = SimpleNamespace(reservation_seconds=900, risk_required=False)
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def db(stack):
    url = stack.env["DELIVERY_DATABASE_URL"] + "_statements"
    stackmod.drop_database(url)
    stackmod.ensure_database(url)
    upgrade("delivery", url)
    database = Database(url, Base.metadata)
    domain.terms_cache._terms.clear()
    try:
        yield database
    finally:
        database.dispose()
        stackmod.drop_database(url)


def _seed(db, product_id: str, keys: int, price_cents: int = 1000, reusable: bool = False) -> None:
    with db.write() as s:
        s.execute(text("INSERT INTO merchants (id, status, fee_bps, version) VALUES ('m1', 'active', 200, 1) "
                       "ON CONFLICT DO NOTHING"))
        s.execute(text("INSERT INTO products (id, merchant_id, title, price_cents, cost_cents, currency, status, "
                       "max_per_order, instructions, commission, version, reusable_keys) VALUES (:id, 'm1', 't', "
                       ":price, 0, 'CNY', 'active', 10, '', '{}', 1, :reusable)"),
                  {"id": product_id, "price": price_cents, "reusable": keys if reusable else 0})
        for n in range(keys):
            key_id = s.scalar(text("INSERT INTO card_keys (product_id, secret, fingerprint, reusable, created_at) "
                                   "VALUES (:p, 'x', :f, :r, now()) RETURNING id"),
                              {"p": product_id, "f": f"{product_id}-{n}", "r": reusable})
            if not reusable:
                s.execute(text("INSERT INTO key_pool (key_id, product_id) VALUES (:k, :p)"),
                          {"k": key_id, "p": product_id})


def _order(db, product_id: str, quantity: int = 1):
    return domain.create_order(db, SETTINGS, {"product_id": product_id, "quantity": quantity,
                                              "email": "buyer@example.com"}, {"ip": "10.0.0.1"}, "sandbox", NOW)


def _count(db, model, **where) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(model).filter_by(**where))


def _change_product(db, product_id: str, **values) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with db.write() as s:
        s.execute(text(f"UPDATE products SET {sets}, version = version + 1 WHERE id = :id"), {**values, "id": product_id})


def test_an_order_takes_the_current_terms_whatever_the_cache_holds(db):
    _seed(db, "p1", keys=5)
    assert _order(db, "p1")[0].amount_cents == 1000
    _change_product(db, "p1", price_cents=1500)  # the cache still holds 1000
    first, _ = _order(db, "p1", quantity=2)
    assert (first.amount_cents, first.unit_price_cents) == (3000, 1500)
    _change_product(db, "p1", status="inactive")
    with pytest.raises(ApiError) as refused:
        _order(db, "p1")
    assert refused.value.code == "unknown_product"
    _change_product(db, "p1", status="active")  # the cache now holds the inactive terms
    assert _order(db, "p1")[0].amount_cents == 1500
    with db.write() as s:  # the merchant changes its fee: a new merchant version
        s.execute(text("UPDATE merchants SET fee_bps = 500, version = version + 1 WHERE id = 'm1'"))
    order_no = _order(db, "p1")[0].order_no
    with db.read() as s:
        assert s.get(Order, order_no).fee_bps == 500
    assert _count(db, KeyPool, product_id="p1") == 0


def test_a_shortfall_writes_nothing(db):
    _seed(db, "p2", keys=2)
    events_before = _count(db, outbox.table)
    with pytest.raises(ApiError) as refused:
        _order(db, "p2", quantity=3)
    assert refused.value.status == 409
    assert (_count(db, KeyPool, product_id="p2"), _count(db, Order, product_id="p2")) == (2, 0)
    assert _count(db, outbox.table) == events_before
    order, _ = _order(db, "p2", quantity=2)
    with db.read() as s:
        positions = s.execute(text("SELECT position FROM order_keys WHERE order_no = :o ORDER BY position"),
                              {"o": order.order_no}).scalars().all()
    assert positions == [0, 1] and _count(db, KeyPool, product_id="p2") == 0
    assert _count(db, outbox.table) == events_before + 1


def test_reusable_keys_are_sold_in_a_transaction(db):
    _seed(db, "p3", keys=1, reusable=True)
    orders = [_order(db, "p3", quantity=2)[0] for _ in range(3)]
    with db.read() as s:
        held = s.execute(text("SELECT count(*) FROM order_keys WHERE reusable")).scalar()
    assert held == 6 and _count(db, CardKey, product_id="p3") == 1
    assert all(o.status == "pending" for o in orders)


def _notice(order, txn_id: str) -> Notice:
    return Notice(order.order_no, order.amount_cents, order.currency, txn_id, "paid")


def test_a_payment_writes_nothing_when_its_order_changed_after_the_read(db):
    _seed(db, "p4", keys=2)
    order, _ = _order(db, "p4")
    with db.autocommit() as conn:
        seen = domain._ORDER_READ.execute(conn, {"order_no": order.order_no}).first()
    with db.write() as s:  # risk's decision lands between the read and the statement
        s.execute(text("UPDATE orders SET risk_decision = 'review' WHERE order_no = :o"), {"o": order.order_no})
    with db.autocommit() as conn:
        assert domain._pay_and_sell(conn, seen, "sandbox", _notice(order, "t-stale"), NOW, "approve") is None
    assert _count(db, Payment) == 0
    with db.read() as s:
        assert s.get(Order, order.order_no).status == "pending"
    # decided again under the lock: under review, the order is paid and waits for the operator
    assert domain.apply_payment(db, SETTINGS, "sandbox", _notice(order, "t-stale"), NOW) == "paid"
    assert domain.apply_payment(db, SETTINGS, "sandbox", _notice(order, "t-stale"), NOW) == "replay"


def test_a_transaction_id_already_used_changes_nothing(db):
    _seed(db, "p5", keys=2)
    first, second = _order(db, "p5")[0], _order(db, "p5")[0]
    assert domain.apply_payment(db, SETTINGS, "sandbox", _notice(first, "t-1"), NOW) == "delivered"
    assert domain.apply_payment(db, SETTINGS, "sandbox", _notice(second, "t-1"), NOW) == "replay"
    with db.read() as s:
        assert s.get(Order, second.order_no).status == "pending"
        assert s.get(Order, first.order_no).delivered_at is not None
    assert _count(db, Payment) == 1
    assert domain.apply_payment(db, SETTINGS, "sandbox", _notice(second, "t-2"), NOW + timedelta(seconds=1)) \
        == "delivered"
