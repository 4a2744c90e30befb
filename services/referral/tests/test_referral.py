import json

from sqlalchemy import select

from services.referral import domain
from services.referral.models import User, outbox


def _events(shop, type_):
    db = shop.system.apps["referral"].extensions["linkshop"].db
    with db.read() as s:
        return [json.loads(b)["payload"] for b in s.scalars(
            select(outbox.table.c.body).where(outbox.table.c.type == type_).order_by(outbox.table.c.id))]


def test_design_example_exactly(shop):
    """100.00 paid, fee 2%, cost 60.00, 8%/4%/2% → 8.00 / 4.00 / 2.00."""
    merchant, pid = shop.commission_product()
    a, b, c, buyer = shop.chain(4)
    order = shop.buy_as(pid, buyer)
    assert [l["amount_cents"] for l in shop.lines(c)] == [800]
    assert [l["amount_cents"] for l in shop.lines(b)] == [400]
    assert [l["amount_cents"] for l in shop.lines(a)] == [200]
    assert shop.lines(buyer) == []
    accrued = _events(shop, "referral.commission.accrued")
    assert accrued == [accrued[0] | {"order_no": order["order_no"], "amount_cents": 10000}]
    assert [(l["level"], l["rate_bps"], l["amount_cents"]) for l in accrued[0]["lines"]] == \
        [(1, 800, 800), (2, 400, 400), (3, 200, 200)]
    assert shop.explain(order, c)["reason_code"] == "paid"


def test_ref_code_attributes_to_its_owner_and_upline(shop):
    _, pid = shop.commission_product()
    a, b = shop.chain(2)
    order = shop.buy_as(pid, None, ref_code=b["invite_code"])
    assert [l["level"] for l in shop.lines(b)] == [1]
    assert [l["level"] for l in shop.lines(a)] == [2]
    assert shop.explain(order, b)["source"] == "ref_code"


def test_bound_buyer_upline_wins_over_a_ref_code(shop):
    _, pid = shop.commission_product()
    a, buyer = shop.chain(2)
    stranger = shop.user("stranger@example.com")
    order = shop.buy_as(pid, buyer, ref_code=stranger["invite_code"])
    assert shop.lines(stranger) == [] and len(shop.lines(a)) == 1
    assert shop.explain(order, stranger)["reason_code"] == "not_in_chain"


def test_buyer_never_paid_in_own_upline(shop):
    _, pid = shop.commission_product()
    a, b = shop.chain(2)
    order = shop.buy_as(pid, None, ref_code=a["invite_code"], email="a-again@example.com")
    order2 = shop.buy_as(pid, a, ref_code=b["invite_code"])  # a buys through their own downline's link
    assert [l["order_no"] for l in shop.lines(a)] == [order["order_no"]]
    assert shop.explain(order2, a)["reason_code"] == "buyer_is_self"
    assert [l["order_no"] for l in shop.lines(b)] == [order2["order_no"]]


def test_level_cap_and_zero_rule_explained(shop):
    _, pid = shop.commission_product(levels=(800, 0))
    a, b, c, buyer = shop.chain(4)
    order = shop.buy_as(pid, buyer)
    assert shop.explain(order, c)["reason_code"] == "paid"
    assert shop.explain(order, b)["reason_code"] == "rule_is_zero"
    explained = shop.explain(order, a)
    assert explained["reason_code"] == "beyond_level_cap" and explained["level"] == 3


def test_commission_capped_by_margin(shop):
    # 100.00 - 2.00 fee - 90.00 cost = 8.00 margin: L1 gets 6.00 (of 6%), L2 gets 2.00 of 4.00, L3 nothing
    _, pid = shop.commission_product(levels=(600, 400, 200), cost=9000)
    a, b, c, buyer = shop.chain(4)
    order = shop.buy_as(pid, buyer)
    assert [l["amount_cents"] for l in shop.lines(c)] == [600]
    assert [l["amount_cents"] for l in shop.lines(b)] == [200]
    assert shop.lines(a) == []
    assert shop.explain(order, b)["reason_code"] == "capped_by_margin"
    assert shop.explain(order, a)["reason_code"] == "capped_by_margin"


def test_cap_bps_lowers_the_limit_further(shop):
    # margin 38.00, cap 25% → 9.50 for all levels
    _, pid = shop.commission_product(cap_bps=2500)
    a, b, c, buyer = shop.chain(4)
    shop.buy_as(pid, buyer)
    total = sum(l["amount_cents"] for u in (a, b, c) for l in shop.lines(u))
    assert total == 950


def test_refund_reverses_pro_rata_at_frozen_rates_once(shop):
    merchant, pid = shop.commission_product(levels=(1000,), price=1001, cost=0)
    a, buyer = shop.chain(2)
    order = shop.buy_as(pid, buyer, quantity=3)
    assert shop.lines(a)[0]["amount_cents"] == 300  # floor(3003 * 10%)
    # a later rule change never touches an existing order's commission
    shop.catalog.patch(f"/catalog/v1/products/{pid}", json={"commission": {"levels_bps": [5000]}}, headers=merchant)
    shop.drain()
    shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refund", json={"quantity": 1, "reason": "x"}, headers=merchant)
    shop.drain()
    line = shop.lines(a)[0]
    assert (line["amount_cents"], line["reversed_cents"], line["rate_bps"]) == (300, 100, 1000)
    assert shop.explain(order, a)["reason_code"] == "partially_refunded"
    shop.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refund", json={"reason": "rest"}, headers=merchant)
    shop.drain()
    line = shop.lines(a)[0]
    assert (line["reversed_cents"], line["status"]) == (300, "reversed")
    reversed_total = sum(l["amount_cents"] for e in _events(shop, "referral.commission.reversed") for l in e["lines"])
    assert reversed_total == 300
    assert shop.explain(order, a)["reason_code"] == "refunded"


def test_explain_before_delivery(shop):
    _, pid = shop.commission_product()
    a, buyer = shop.chain(2)
    r = shop.delivery.post("/delivery/v1/orders", json={"product_id": pid, "quantity": 1, "email": "x@example.com"},
                           headers=shop.as_user(buyer))
    assert shop.explain(r.json, a)["reason_code"] == "order_not_delivered_yet"


def test_registration_and_binding_rules(shop):
    a = shop.user("Alice.Smith+shop@gmail.com")
    r = shop.referral.post("/referral/v1/users", json={"email": "alicesmith@googlemail.com"})
    assert r.status_code == 409 and r.json["error"]["code"] == "already_registered"
    r = shop.referral.post("/referral/v1/users", json={"email": "b@example.com", "invite_code": "NOPE1234"})
    assert r.status_code == 422 and "invite_code" in r.json["error"]["fields"]
    for bad in ({"email": "nope"}, {}, {"email": "c@example.com", "extra": 1}):
        assert shop.referral.post("/referral/v1/users", json=bad).status_code == 422
    b = shop.user("b@example.com", a["invite_code"])
    assert b["parent_id"] == a["user_id"]
    registered = _events(shop, "referral.user.registered")
    assert registered[-1]["ancestors"] == [a["user_id"]] and "email" not in registered[-1]
    # self-invite, permanent binding, cycles
    r = shop.referral.post(f"/referral/v1/users/{a['user_id']}/bind", json={"invite_code": a["invite_code"]},
                           headers=shop.as_user(a))
    assert r.status_code == 422 and r.json["error"]["code"] == "self_invite"
    c = shop.user("c@example.com")
    r = shop.referral.post(f"/referral/v1/users/{b['user_id']}/bind", json={"invite_code": c["invite_code"]},
                           headers=shop.as_user(b))
    assert r.status_code == 409 and r.json["error"]["code"] == "binding_locked"
    r = shop.referral.post(f"/referral/v1/users/{a['user_id']}/bind", json={"invite_code": b["invite_code"]},
                           headers=shop.as_user(a))
    assert r.status_code == 422 and r.json["error"]["code"] == "would_create_cycle"
    r = shop.referral.post(f"/referral/v1/users/{a['user_id']}/bind", json={"invite_code": c["invite_code"]},
                           headers=shop.as_user(b))
    assert r.status_code == 403


def test_rebinding_after_the_lock_moves_the_whole_subtree_without_cycles(shop):
    assert shop.referral.put("/referral/v1/settings/binding", json={"mode": "lock", "lock_days": 0}).status_code == 401
    assert shop.referral.put("/referral/v1/settings/binding", json={"mode": "lock", "lock_days": 0},
                             headers=shop.admin).status_code == 200
    a, b, c, d = shop.chain(4)
    x, y = shop.chain(2, prefix="x")
    # the cycle check covers the whole chain, not one hop: a cannot go under d (its great-grandchild)
    r = shop.referral.post(f"/referral/v1/users/{a['user_id']}/bind", json={"invite_code": d["invite_code"]},
                           headers=shop.as_user(a))
    assert r.status_code == 422
    r = shop.referral.post(f"/referral/v1/users/{b['user_id']}/bind", json={"invite_code": y["invite_code"]},
                           headers=shop.as_user(b))
    assert r.status_code == 200 and r.json["parent_id"] == y["user_id"]
    db = shop.system.apps["referral"].extensions["linkshop"].db
    with db.read() as s:
        moved = s.get(User, d["user_id"])
        assert domain.ancestors(moved) == [c["user_id"], b["user_id"], y["user_id"], x["user_id"]]
        assert moved.depth == 4
    team = shop.referral.get(f"/referral/v1/users/{x['user_id']}/team", headers=shop.as_user(x)).json
    assert [l["members"] for l in team["levels"]] == [1, 1, 1, 1]
    assert shop.referral.get(f"/referral/v1/users/{a['user_id']}/team", headers=shop.as_user(a)).json["levels"] == []


def test_team_view(shop):
    _, pid = shop.commission_product()
    root = shop.user("root@example.com")
    kids = [shop.user(f"k{i}@example.com", root["invite_code"]) for i in range(3)]
    grandkid = shop.user("g@example.com", kids[0]["invite_code"])
    shop.buy_as(pid, grandkid)
    team = shop.referral.get(f"/referral/v1/users/{root['user_id']}/team?per_page=2", headers=shop.as_user(root)).json
    assert (team["direct"], team["indirect"]) == (3, 1)
    assert sum(g["joined"] for g in team["growth"]) == 4
    assert team["sales_by_level"] == [{"level": 2, "orders": 1, "sales_cents": 10000, "commission_cents": 400}]
    assert team["top_products"][0]["commission_cents"] == 400
    assert team["tree"]["total"] == 3 and len(team["tree"]["items"]) == 2
    assert team["tree"]["items"][0]["team_size"] == 1
    sub = shop.referral.get(f"/referral/v1/users/{root['user_id']}/team?parent={kids[0]['user_id']}",
                            headers=shop.as_user(root)).json
    assert [i["user_id"] for i in sub["tree"]["items"]] == [grandkid["user_id"]]
    outsider = shop.user("o@example.com")
    r = shop.referral.get(f"/referral/v1/users/{root['user_id']}/team?parent={outsider['user_id']}",
                          headers=shop.as_user(root))
    assert r.status_code == 404
    assert shop.referral.get(f"/referral/v1/users/{root['user_id']}/team").status_code == 401
    assert shop.referral.get(f"/referral/v1/users/{root['user_id']}/team?per_page=0",
                             headers=shop.as_user(root)).status_code == 422


def test_flagged_line_is_held_then_approved_or_rejected(shop):
    from shared.events import make_envelope
    _, pid = shop.commission_product()
    a, b, buyer = shop.chain(3)
    order = shop.buy_as(pid, buyer)
    for user in (a, b):
        env = make_envelope("risk.commission.flagged", {"order_no": order["order_no"], "user_id": user["user_id"],
                                                        "reason": "shares a device with the buyer"}, producer="risk")
        shop.system.bus.inject("referral", json.dumps(env).encode())
    shop.drain()
    assert shop.lines(b)[0]["status"] == "held"
    assert shop.explain(order, b)["reason_code"] == "flagged"
    held = shop.referral.get("/referral/v1/commissions/held", headers=shop.admin).json["items"]
    assert len(held) == 2
    by_user = {h["user_id"]: h["id"] for h in held}
    assert shop.referral.post(f"/referral/v1/commissions/{by_user[b['user_id']]}/approve", json={},
                              headers=shop.admin).json["status"] == "accrued"
    r = shop.referral.post(f"/referral/v1/commissions/{by_user[a['user_id']]}/reject", json={"reason": "alt account"},
                           headers=shop.admin)
    assert r.json["status"] == "reversed"
    assert shop.explain(order, a)["reason_code"] == "rejected"
    assert shop.referral.post(f"/referral/v1/commissions/{by_user[a['user_id']]}/approve", json={},
                              headers=shop.admin).status_code == 409
    assert _events(shop, "referral.commission.reversed")[-1]["reason"] == "rejected"


def test_only_the_user_or_the_operator_sees_commissions(shop):
    a, b = shop.chain(2)
    assert shop.referral.get(f"/referral/v1/users/{a['user_id']}/commissions").status_code == 401
    assert shop.referral.get(f"/referral/v1/users/{a['user_id']}/commissions", headers=shop.as_user(b)).status_code == 403
    assert shop.referral.get(f"/referral/v1/users/{a['user_id']}/commissions",
                             headers={"Authorization": "Bearer forged"}).status_code == 401
    seen = shop.referral.get(f"/referral/v1/users/{a['user_id']}/commissions", headers=shop.admin)
    assert seen.status_code == 200 and seen.json == {"items": [], "page": 1, "per_page": 50, "total": 0}
    assert shop.referral.get("/referral/v1/orders/x/explain", headers=shop.admin).status_code == 422
