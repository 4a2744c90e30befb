"""Design §8 invariants 1 and 2 under random sequences of buying, paying (twice, late),
expiring, importing, replacing and refunding."""
from datetime import timedelta

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from services.delivery.models import KeyPool, Order, OrderKey
from shared.events import utcnow

from tests.kit import Shop

steps = st.lists(st.one_of(
    st.tuples(st.just("order"), st.integers(1, 3)),
    st.tuples(st.just("pay"), st.integers(0, 30)),
    st.tuples(st.just("repay"), st.integers(0, 30)),
    st.tuples(st.just("age"), st.integers(0, 30)),
    st.tuples(st.just("sweep"), st.just(0)),
    st.tuples(st.just("import"), st.integers(1, 4)),
    st.tuples(st.just("replace"), st.integers(0, 30)),
    st.tuples(st.just("refund"), st.integers(0, 30)),
), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_keys_are_sold_once_and_no_paid_order_is_lost(backend, tmp_path_factory, steps):
    shop = Shop(tmp_path_factory.mktemp("inv"), backend)
    merchant, _ = shop.merchant()
    pid = shop.product(merchant, max_per_order=3)
    shop.import_keys(merchant, pid, [f"K{i}" for i in range(4)])
    db = shop.system.apps["delivery"].extensions["linkshop"].db
    orders, paid, imported = [], set(), 4
    for action, arg in steps:
        if action == "order":
            r = shop.order(pid, quantity=arg, email=f"b{len(orders)}@example.com")
            assert r.status_code in (201, 409)
            if r.status_code == 201:
                orders.append(r.json)
        elif orders and action in ("pay", "repay"):
            order = orders[arg % len(orders)]
            txn = f"t-{order['order_no']}" if action == "pay" else f"t2-{order['order_no']}"
            assert shop.notify(order["order_no"], order["amount_cents"], txn).status_code == 200
            paid.add(order["order_no"])
        elif orders and action == "age":
            with db.write() as s:
                s.get(Order, orders[arg % len(orders)]["order_no"]).expires_at = utcnow() - timedelta(seconds=1)
        elif action == "sweep":
            shop.jobs()
        elif action == "import":
            shop.import_keys(merchant, pid, [f"K{imported + i}" for i in range(arg)])
            imported += arg
        elif orders and action == "replace":
            order = orders[arg % len(orders)]
            shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/replace", json={"key_index": 0}, headers=merchant)
        elif orders and action == "refund":
            order = orders[arg % len(orders)]
            shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refund", json={"reason": "r"}, headers=merchant)

        with db.read() as s:
            # 1: a key is delivered to at most one order (active or replaced, it never moves)
            key_ids = s.scalars(select(OrderKey.key_id)).all()
            assert len(key_ids) == len(set(key_ids))
            pooled = set(s.scalars(select(KeyPool.key_id)))
            assert not pooled & set(key_ids)
            for order in s.scalars(select(Order)):
                held = s.scalar(select(func.count()).select_from(OrderKey).where(
                    OrderKey.order_no == order.order_no, OrderKey.active.is_(True)))
                # an order holds exactly `quantity` keys or none
                assert held in (0, order.quantity), (order.status, held)
                if order.status in ("delivered", "partially_refunded") or (
                        order.status == "refunded" and order.delivered_at is not None):
                    assert held == order.quantity
                if order.status in ("expired", "awaiting_stock") or (
                        order.status == "refunded" and order.delivered_at is None):
                    assert held == 0
                # 2: every paid order is delivered, awaiting stock or refunded; none is lost
                if order.order_no in paid:
                    assert order.status in ("delivered", "awaiting_stock", "refunded", "partially_refunded")
            # every key is accounted for: in the pool, in an order, or retired
            assert len(pooled) + len(key_ids) == imported
