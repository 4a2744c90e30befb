"""Withdrawal review: new accounts, money withdrawn as soon as it is earned, tainted earnings,
destinations shared between accounts."""
import json

from tests.kit import at

DAY = 86400


def _earn(shop, user_id, t, cents=1000, buyer_email=None, **order):
    no = shop.created(t, email=buyer_email or f"buyer{t}@example.com", ip=f"81.3.{t // DAY % 250}.{t % 250}",
                      device_id=f"dev-{t}", **order)
    shop.paid(no, t=t + 30)
    shop.send("delivery.order.delivered", {"order_no": no, "delivered_at": at(t + 31), "paid_at": at(t + 30)})
    shop.accrued(no, [(user_id, cents)])
    return no


def _withdraw(shop, wid, t, user_id=None, amount=900, destination="dst-1", owner=None, **kw):
    shop.send("payout.withdrawal.requested", {
        "withdrawal_id": wid, "owner": owner or f"user:{user_id}", "user_id": user_id, "amount_cents": amount,
        "fee_cents": 100, "destination_hash": destination, "requested_at": at(t)}, **kw)
    return wid


def _assessed(shop, wid):
    return [p for p in shop.published("risk.withdrawal.assessed") if p["withdrawal_id"] == wid]


def test_an_established_account_withdrawing_old_earnings_is_approved(shop):
    shop.registered("old", t=-200 * DAY, ip="81.3.200.1", device_id="old-phone", email="old@example.com")
    _earn(shop, "old", 0)
    wid = _withdraw(shop, "w1", 20 * DAY, "old")
    assert _assessed(shop, wid) == [{"withdrawal_id": "w1", "decision": "approve", "score": 0, "reasons": []}]
    assert shop.decisions(withdrawal_id="w1")[0]["kind"] == "withdrawal"


def test_a_new_account_withdrawing_what_it_just_earned_is_reviewed(shop):
    shop.registered("new", t=0, ip="81.3.200.2", device_id="new-phone", email="new@example.com")
    _earn(shop, "new", 2 * DAY)
    wid = _withdraw(shop, "w2", 3 * DAY, "new")
    d = shop.decisions(withdrawal_id=wid)[0]
    assert (d["decision"], d["score"]) == ("review", 60)
    assert [r["rule"] for r in d["reasons"]] == ["withdrawal_new_account", "withdrawal_fast"]
    assert shop.decisions(status="review", kind="withdrawal")[0]["id"] == d["id"]
    shop.risk.post(f"/risk/v1/decisions/{d['id']}/approve", headers=shop.admin)
    assert [p["decision"] for p in _assessed(shop, wid)] == ["review", "approve"]
    # one signal alone stays below the review threshold, but is said
    _earn(shop, "new", 4 * DAY)
    late = shop.decisions(withdrawal_id=_withdraw(shop, "w3", 40 * DAY, "new"))[0]
    assert (late["decision"], [r["rule"] for r in late["reasons"]]) == ("approve", [])
    shop.registered("newer", t=30 * DAY, ip="81.3.200.3", device_id="newer-phone", email="newer@example.com")
    _earn(shop, "newer", 31 * DAY)
    fresh = shop.decisions(withdrawal_id=_withdraw(shop, "w4", 45 * DAY, "newer", destination="dst-4"))[0]
    assert (fresh["decision"], [r["rule"] for r in fresh["reasons"]]) == ("approve", ["withdrawal_new_account"])


def test_earnings_mostly_from_flagged_lines_are_reviewed(shop):
    shop.registered("cheat", t=-100 * DAY, ip="81.3.201.1", device_id="cheat-phone", email="cheat@example.com")
    for t in (0, DAY):  # the alt buys on the cheat's phone
        no = shop.created(t, email="alt@example.com", ip="81.3.201.9", device_id="cheat-phone")
        shop.paid(no, t=t + 30)
        shop.send("delivery.order.delivered", {"order_no": no, "delivered_at": at(t + 31)})
        shop.accrued(no, [("cheat", 1000)])
    _earn(shop, "cheat", 2 * DAY, cents=500)
    d = shop.decisions(withdrawal_id=_withdraw(shop, "w5", 30 * DAY, "cheat"))[0]
    assert d["decision"] == "review" and [r["rule"] for r in d["reasons"]] == ["withdrawal_tainted"]
    assert "20.00 of 25.00" in d["reasons"][0]["reason"]


def test_a_destination_shared_between_accounts_is_reviewed(shop):
    for user in ("a", "b"):
        shop.registered(user, t=-100 * DAY, ip=f"81.3.202.{ord(user)}", device_id=f"{user}-phone",
                        email=f"{user}@example.com")
    _withdraw(shop, "wa", 0, "a", destination="pocket")
    _withdraw(shop, "wa2", DAY, "a", destination="pocket")  # one's own destination again is fine
    assert shop.decisions(withdrawal_id="wa2")[0]["decision"] == "approve"
    d = shop.decisions(withdrawal_id=_withdraw(shop, "wb", 2 * DAY, "b", destination="pocket"))[0]
    assert d["decision"] == "review" and d["reasons"][0]["reason"] == "the destination was used by 1 other account(s)"
    m = shop.decisions(withdrawal_id=_withdraw(shop, "wm", 2 * DAY, owner="merchant:m1", destination="bank-m"))[0]
    assert m["decision"] == "approve"


def test_withdrawal_events_are_idempotent_and_wait_for_the_user(shop):
    env = shop.send("payout.withdrawal.requested", {
        "withdrawal_id": "wx", "owner": "user:ghost", "user_id": "ghost", "amount_cents": 900, "fee_cents": 100,
        "destination_hash": "d", "requested_at": at(0)})
    assert shop.decisions(withdrawal_id="wx") == []
    # the unknown user's withdrawal was retried, then dead-lettered (a real broker keeps retrying)
    assert [json.loads(body)["id"] for body in shop.system.bus.dead["risk"]] == [env["id"]]
    shop.registered("ghost", t=-100 * DAY, ip="81.3.203.1", device_id="ghost-phone", email="g@example.com")
    shop.send(env["type"], env["payload"], event_id=env["id"])
    shop.send(env["type"], env["payload"], event_id=env["id"])
    shop.send(env["type"], env["payload"])
    assert len(shop.decisions(withdrawal_id="wx")) == 1 and len(_assessed(shop, "wx")) == 1
