"""With LINKSHOP_RISK_REQUIRED=true delivery waits for risk (design §5): approve delivers,
review waits for the operator, reject refunds; a risk service that is down loses nothing."""
import pytest


@pytest.fixture
def required(make_shop):
    shop = make_shop(LINKSHOP_RISK_REQUIRED="true")
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["K1", "K2", "K3", "K4"])
    return shop, pid


def _refunds(shop):
    import json
    from sqlalchemy import select
    ctx = shop.system.apps["delivery"].extensions["linkshop"]
    with ctx.db.read() as s:
        rows = s.scalars(select(ctx.outbox.table.c.body).where(ctx.outbox.table.c.type == "delivery.order.refunded"))
        return [json.loads(b)["payload"] for b in rows]


def test_a_normal_order_is_delivered_once_risk_approves(required):
    shop, pid = required
    order = shop.buy(pid, email="happy@example.com", device_id="phone-1")
    assert shop.view(order)["status"] == "paid"  # paid, waiting for risk
    shop.drain()
    view = shop.view(order)
    assert view["status"] == "delivered" and view["keys"] == ["K1"]
    assert shop.decision(order["order_no"])["decision"] == "approve"


def test_a_blocklisted_email_is_rejected_and_refunded(required):
    shop, pid = required
    shop.block("email", "fraud@example.com", reason="chargebacks")
    paid_first = shop.buy(pid, email="Fraud@Example.com")  # paid before risk answered
    shop.drain()
    assert shop.view(paid_first)["status"] == "rejected" and shop.view(paid_first)["keys"] == []
    assert [r["order_no"] for r in _refunds(shop)] == [paid_first["order_no"]]
    assert _refunds(shop)[0]["reason"] == "rejected by risk review"
    r = shop.order(pid, email="fraud@example.com")  # answered before any payment: the keys go back
    shop.drain()
    assert shop.view(r.json)["status"] == "rejected"
    d = shop.decision(r.json["order_no"])
    assert d["decision"] == "reject" and d["reasons"][0]["rule"] == "blocklist"
    ok = shop.buy(pid, email="fine@example.com")
    shop.drain()
    assert shop.view(ok)["keys"] == ["K1"]  # the reservations went back to stock


def test_review_waits_for_the_operator(required):
    shop, pid = required
    shop.set_rule("velocity_email", params={"limit": 1})
    first = shop.buy(pid, email="twice@example.com")
    shop.drain()
    second = shop.buy(pid, email="twice@example.com")
    shop.drain()
    assert shop.view(first)["status"] == "delivered" and shop.view(second)["status"] == "paid"
    d = shop.decision(second["order_no"])
    assert d["decision"] == "review"
    shop.risk.post(f"/risk/v1/decisions/{d['id']}/approve", headers=shop.admin)
    shop.drain()
    assert shop.view(second)["status"] == "delivered"
    third = shop.buy(pid, email="twice@example.com")
    shop.drain()
    shop.risk.post(f"/risk/v1/decisions/{shop.decision(third['order_no'])['id']}/reject", headers=shop.admin)
    shop.drain()
    assert shop.view(third)["status"] == "rejected"


def test_orders_wait_while_risk_is_down_and_are_delivered_when_it_answers(required):
    shop, pid = required
    hub = shop.system.hub
    risk = [c for c in hub._consumers if c[0] == "risk"]
    hub._consumers = [c for c in hub._consumers if c[0] != "risk"]
    orders = [shop.buy(pid, email=f"b{i}@example.com", device_id=f"d{i}") for i in range(2)]
    shop.drain()
    assert [shop.view(o)["status"] for o in orders] == ["paid", "paid"]
    hub._consumers += risk
    shop.drain()
    assert [shop.view(o)["status"] for o in orders] == ["delivered", "delivered"]
