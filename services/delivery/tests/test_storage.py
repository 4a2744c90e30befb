"""Delivery's storage contract (services/delivery/storage.py), the same tests on SQLite and on
PostgreSQL: every operation whose SQL differs between the two, races included, and the
payment and order rules on top of them.

Each test runs on both backends through tests/kit's ``backend`` fixture; the races are
marked ``commits``: their threads each take a connection of their own and commit for real.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, text

from services.delivery import domain, storage
from services.delivery.models import CardKey, KeyPool, Order, OrderKey, Payment, outbox
from services.delivery.payments import Notice
from shared.errors import Invalid, OutOfStock

SETTINGS = SimpleNamespace(reservation_seconds=900, risk_required=False)
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def db(backend, tmp_path):
    """Delivery's database alone, on each backend (tests/kit: a rolled-back transaction per
    test on PostgreSQL, unless the test is marked ``commits``)."""
    database = backend.open_database("delivery", tmp_path)
    storage.terms_cache.clear()
    yield database
    database.dispose()


def _seed(db, product_id: str, keys: int, price_cents: int = 1000, reusable: bool = False) -> list[int]:
    with db.write() as s:
        if s.execute(text("SELECT 1 FROM merchants WHERE id = 'm1'")).first() is None:
            s.execute(text("INSERT INTO merchants (id, status, fee_bps, version) VALUES ('m1', 'active', 200, 1)"))
        s.execute(text("INSERT INTO products (id, merchant_id, title, price_cents, cost_cents, currency, status, "
                       "max_per_order, instructions, commission, version, reusable_keys) VALUES (:id, 'm1', 't', "
                       ":price, 0, 'CNY', 'active', 10, '', '{}', 1, :reusable)"),
                  {"id": product_id, "price": price_cents, "reusable": keys if reusable else 0})
        ids = []
        for n in range(keys):
            s.add(key := CardKey(product_id=product_id, secret=b"x", fingerprint=f"{product_id}-{n}",
                                 reusable=reusable, created_at=NOW))
            s.flush()
            ids.append(key.id)
            if not reusable:
                s.add(KeyPool(key_id=key.id, product_id=product_id))
    return ids


def _order(db, product_id: str, quantity: int = 1, now: datetime = NOW):
    return domain.create_order(db, SETTINGS, {"product_id": product_id, "quantity": quantity,
                                              "email": "buyer@example.com"}, {"ip": "10.0.0.1"}, "sandbox", now)


def _count(db, model, **where) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(model).filter_by(**where))


def _change_product(db, product_id: str, **values) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with db.write() as s:
        s.execute(text(f"UPDATE products SET {sets}, version = version + 1 WHERE id = :id"), {**values, "id": product_id})


def _notice(order, txn_id: str, amount_cents: int | None = None) -> Notice:
    return Notice(order.order_no, order.amount_cents if amount_cents is None else amount_cents, order.currency,
                  txn_id, "paid")


def _in_threads(work, count: int) -> None:
    """Run ``work(n)`` in ``count`` threads at once, n = 0..count-1, and wait for them all."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _held_keys(db, order_no: str) -> list[int]:
    with db.read() as s:
        return list(s.scalars(select(OrderKey.key_id).where(OrderKey.order_no == order_no, OrderKey.active.is_(True))
                              .order_by(OrderKey.position)))


# -- placing an order ----------------------------------------------------------------------------

def test_an_order_holds_its_keys_in_order_and_announces_itself(db):
    ids = _seed(db, "p1", keys=3)
    events = _count(db, outbox.table)
    order, token = _order(db, "p1", quantity=2)
    assert (order.status, order.amount_cents, order.quantity) == ("pending", 2000, 2) and token
    assert _held_keys(db, order.order_no) == ids[:2]
    with db.read() as s:
        assert list(s.scalars(select(OrderKey.position).where(OrderKey.order_no == order.order_no)
                              .order_by(OrderKey.position))) == [0, 1]
    assert _count(db, KeyPool, product_id="p1") == 1
    assert _count(db, outbox.table) == events + 1


def test_an_order_takes_the_current_terms_whatever_the_cache_holds(db):
    _seed(db, "p1", keys=5)
    assert _order(db, "p1")[0].amount_cents == 1000
    _change_product(db, "p1", price_cents=1500)  # the cache still holds 1000
    first, _ = _order(db, "p1", quantity=2)
    assert (first.amount_cents, first.unit_price_cents) == (3000, 1500)
    _change_product(db, "p1", status="inactive")
    with pytest.raises(Invalid) as refused:
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


def test_place_order_with_stale_terms_writes_nothing(db):
    _seed(db, "p1", keys=2)
    store = storage.of(db)
    seen = store.terms(db, "p1")
    _change_product(db, "p1", price_cents=1200)
    values, _token, created = domain._new_order(seen, {"product_id": "p1", "quantity": 1, "email": "b@x.org"},
                                                {}, "sandbox", NOW, SETTINGS)
    assert store.place_order(db, values, created, seen) == storage.STALE
    assert (_count(db, Order), _count(db, KeyPool), _count(db, outbox.table)) == (0, 2, 0)


def test_a_shortfall_writes_nothing(db):
    _seed(db, "p2", keys=2)
    events_before = _count(db, outbox.table)
    with pytest.raises(OutOfStock):
        _order(db, "p2", quantity=3)
    assert (_count(db, KeyPool, product_id="p2"), _count(db, Order, product_id="p2")) == (2, 0)
    assert _count(db, outbox.table) == events_before
    order, _ = _order(db, "p2", quantity=2)
    with db.read() as s:
        positions = s.execute(text("SELECT position FROM order_keys WHERE order_no = :o ORDER BY position"),
                              {"o": order.order_no}).scalars().all()
    assert positions == [0, 1] and _count(db, KeyPool, product_id="p2") == 0
    assert _count(db, outbox.table) == events_before + 1


def test_reusable_keys_are_handed_out_in_turn_and_never_run_out(db):
    ids = _seed(db, "p3", keys=2, reusable=True)
    orders = [_order(db, "p3", quantity=3)[0] for _ in range(3)]
    assert all(o.status == "pending" for o in orders)
    assert _held_keys(db, orders[0].order_no) == [ids[0], ids[1], ids[0]]
    with db.read() as s:
        held = s.execute(text("SELECT count(*) FROM order_keys WHERE reusable")).scalar()
    assert held == 9 and _count(db, CardKey, product_id="p3") == 2


@pytest.mark.commits
def test_concurrent_buyers_never_share_a_key_and_the_rest_are_refused(db):
    _seed(db, "hot", keys=12)
    results, lock = [], threading.Lock()

    def buyer(_n):
        for _ in range(4):
            try:
                order, _ = _order(db, "hot")
                outcome = order.order_no
            except OutOfStock:
                outcome = "out_of_stock"
            with lock:
                results.append(outcome)

    _in_threads(buyer, 6)
    placed = [r for r in results if r != "out_of_stock"]
    assert len(placed) == 12 and results.count("out_of_stock") == 12
    with db.read() as s:
        sold = list(s.scalars(select(OrderKey.key_id)))
    assert len(sold) == len(set(sold)) == 12
    assert _count(db, KeyPool) == 0 and _count(db, Order) == 12


# -- the key pool --------------------------------------------------------------------------------

@pytest.mark.commits
def test_claims_racing_each_other_split_the_pool(db):
    _seed(db, "p1", keys=20)
    claimed, lock, barrier = [], threading.Lock(), threading.Barrier(4)

    def claimer(_n):
        barrier.wait()
        for _ in range(3):
            with db.write() as s:
                ids = storage.of(db).claim_keys(s, "p1", 2)
            with lock:
                claimed.extend(ids)

    _in_threads(claimer, 4)
    assert len(claimed) == len(set(claimed)) == 20  # 24 asked for, each key once
    assert _count(db, KeyPool) == 0


def test_allocate_keeping_going_undoes_a_shortfall_and_the_transaction_goes_on(db):
    ids = _seed(db, "p1", keys=1)
    order, _ = _order(db, "p1")
    with db.write() as s:
        store = storage.of(s)
        assert store.allocate(s, "other", "p1", [0, 1], keep_going=True) is False
        s.execute(text("UPDATE orders SET email = 'kept@example.com' WHERE order_no = :o"), {"o": order.order_no})
    with db.read() as s:
        assert s.get(Order, order.order_no).email == "kept@example.com"
    assert _held_keys(db, order.order_no) == ids


def test_released_keys_go_back_to_the_pool_but_a_retired_one_never(db):
    ids = _seed(db, "p1", keys=2)
    order, _ = _order(db, "p1", quantity=2)
    with db.write() as s:
        s.get(CardKey, ids[1]).retired_at = NOW
    with db.write() as s:
        storage.of(s).release_keys(s, order.order_no, "p1")
    assert _held_keys(db, order.order_no) == []
    with db.read() as s:
        assert list(s.scalars(select(KeyPool.key_id))) == [ids[0]]


def test_expired_orders_are_locked_oldest_first(db):
    _seed(db, "p1", keys=3)
    orders = [_order(db, "p1", now=NOW + timedelta(seconds=n))[0] for n in (2, 0, 1)]
    later = NOW + timedelta(seconds=900 + 1.5)  # past the first two reservations' expiry only
    with db.write() as s:
        locked = storage.of(s).lock_expired(s, later, limit=10)
        assert [o.order_no for o in locked] == [orders[1].order_no, orders[2].order_no]
    with db.write() as s:
        assert domain.expire_reservations(s, later) == 2
    assert _count(db, KeyPool) == 2 and _count(db, Order, status="expired") == 2


def test_an_orders_state_is_read_under_its_lock_and_its_risk_decision_kept(db):
    _seed(db, "p1", keys=1)
    order, _ = _order(db, "p1")
    with db.write() as s:
        store = storage.of(s)
        assert store.lock_state(s, "no-such-order") is None
        assert tuple(store.lock_state(s, order.order_no)) == ("pending", None)
        store.set_risk_decision(s, order.order_no, "review")
    with db.write() as s:
        assert tuple(storage.of(s).lock_state(s, order.order_no)) == ("pending", "review")


# -- payments ------------------------------------------------------------------------------------

def _pay_pending(db, order, txn_id: str, seen_decision=None):
    payment = domain._payment_row("sandbox", _notice(order, txn_id), order.order_no, "applied", NOW)
    event = outbox.row("delivery.order.paid", {"order_no": order.order_no}, order.order_no)
    return storage.of(db).pay_pending(db, payment, seen_decision, "paid", NOW, None, [event])


def test_pay_pending_records_once_and_a_replay_writes_nothing(db):
    _seed(db, "p1", keys=2)
    order, _ = _order(db, "p1")
    events = _count(db, outbox.table)
    assert _pay_pending(db, order, "t-1") == (True, True)
    with db.read() as s:
        assert (s.get(Order, order.order_no).status, s.get(Order, order.order_no).paid_at) == ("paid", NOW)
    assert (_count(db, Payment), _count(db, outbox.table)) == (1, events + 1)
    assert _pay_pending(db, order, "t-1") == (False, False)  # no longer pending
    other, _ = _order(db, "p1")
    events = _count(db, outbox.table)
    assert _pay_pending(db, other, "t-1") == (True, False)  # the transaction id is taken: a replay
    with db.read() as s:
        assert s.get(Order, other.order_no).status == "pending"
    assert (_count(db, Payment), _count(db, outbox.table)) == (1, events)


def test_pay_pending_writes_nothing_when_the_risk_decision_changed(db):
    _seed(db, "p1", keys=1)
    order, _ = _order(db, "p1")
    with db.write() as s:
        s.execute(text("UPDATE orders SET risk_decision = 'review' WHERE order_no = :o"), {"o": order.order_no})
    assert _pay_pending(db, order, "t-1", seen_decision=None) == (False, False)
    assert _count(db, Payment) == 0


def test_a_payment_is_decided_again_when_its_order_changed_after_the_read(db):
    _seed(db, "p4", keys=2)
    order, _ = _order(db, "p4")
    seen = storage.of(db).read_order(db, order.order_no)
    with db.write() as s:  # risk's decision lands between the read and the write
        s.execute(text("UPDATE orders SET risk_decision = 'review' WHERE order_no = :o"), {"o": order.order_no})
    assert domain._sell_pending(db, SETTINGS, seen, "sandbox", _notice(order, "t-stale"), NOW) is None
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


def test_a_short_payment_is_refused_and_leaves_no_trace(db):
    _seed(db, "p1", keys=1)
    order, _ = _order(db, "p1")
    with pytest.raises(Invalid) as refused:
        domain.apply_payment(db, SETTINGS, "sandbox", _notice(order, "t-1", amount_cents=999), NOW)
    assert refused.value.code == "amount_mismatch"
    assert _count(db, Payment) == 0
    with db.read() as s:
        assert s.get(Order, order.order_no).status == "pending"


@pytest.mark.commits
def test_concurrent_notices_for_one_order_sell_it_once(db):
    _seed(db, "p1", keys=2)
    order, _ = _order(db, "p1")
    outcomes, lock, barrier = [], threading.Lock(), threading.Barrier(4)

    def notify(n):
        barrier.wait()
        outcome = domain.apply_payment(db, SETTINGS, "sandbox", _notice(order, f"t-{n % 2}"), NOW)
        with lock:
            outcomes.append(outcome)

    _in_threads(notify, 4)
    # two notices of one transaction id each: one sells, its twin is a replay, the other
    # transaction is a second payment kept for a refund (and its twin a replay)
    assert sorted(outcomes) == ["delivered", "duplicate_payment", "replay", "replay"]
    assert _count(db, Payment) == 2 and _count(db, Payment, status="duplicate") == 1
    assert len(_held_keys(db, order.order_no)) == 1
