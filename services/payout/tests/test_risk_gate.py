"""Payout's own auto-approval against risk's withdrawal review (design §7: "only after risk
approves"). Without LINKSHOP_RISK_REQUIRED payout approves small withdrawals itself; with it,
nothing is approved or paid before ``risk.withdrawal.assessed`` says approve, whatever the
jobs do in the meantime, and a repeated or reordered assessment changes nothing."""
import json
from datetime import timedelta

import pytest

from shared.auth import issue_user_token
from shared.events import utcnow
from tests.kit import job_names


def _funded(shop, user_id="usr_w", cents=10000):
    """A user with ``cents`` available: an order delivered long ago and its commission line,
    told to payout as delivery and referral would, then released by the hold job."""
    no = f"ORD-{user_id}"
    shop.inject("delivery.order.delivered", {
        "order_no": no, "product_id": "prd_x", "merchant_id": "mer_x", "quantity": 1, "amount_cents": 2 * cents,
        "cost_cents": 0, "currency": "CNY", "fee_bps": 0, "delivered_at": utcnow().isoformat()})
    shop.inject("referral.commission.accrued", {
        "order_no": no, "merchant_id": "mer_x", "lines": [{"user_id": user_id, "level": 1, "rate_bps": 5000,
                                                            "amount_cents": cents}]})
    shop.jobs_at(shop.after_hold())
    assert shop.balances(f"user:{user_id}") == (0, cents, 0)
    return {"Authorization": "Bearer " + issue_user_token(shop.ctx.settings.token_secret, user_id)}


def _status(shop, w):
    return shop.payout.get(f"/payout/v1/withdrawals/{w['id']}", headers=shop.admin).json


def _assess(shop, w, decision, at, **kw):
    return shop.inject("risk.withdrawal.assessed", {"withdrawal_id": w["id"], "decision": decision, "score": 0,
                                                    "reasons": [f"risk says {decision}"]}, occurred_at=at, **kw)


def _withdrawal_events(shop):
    return [e["type"].rsplit(".", 1)[1] for e in shop.events() if e["type"].startswith("payout.withdrawal.")]


def _jobs_for_a_week(shop):
    """Every job, many times, with the clock moving on: what runs while risk is silent."""
    for days in (0, 1, 7):
        shop.jobs_at(utcnow() + timedelta(days=days))


@pytest.fixture
def required(make_shop):
    return make_shop(LINKSHOP_RISK_REQUIRED="true")


def test_without_risk_required_payout_approves_and_pays_by_itself(make_shop):
    shop = make_shop()
    assert "withdrawal_policy" in job_names(shop.system, "payout")
    user = _funded(shop)
    w = shop.withdraw(user, 2000, key="small").json
    other = shop.withdraw(user, 7000, key="other").json
    shop.jobs_at(utcnow())
    assert (_status(shop, w)["status"], _status(shop, w)["decided_by"]) == ("paid", "auto")
    assert _status(shop, other)["status"] == "paid"  # under the default limit of 50000
    assert _withdrawal_events(shop) == ["requested", "requested", "approved", "approved", "paid", "paid"]


def test_without_risk_required_over_the_limit_waits_for_review(make_shop):
    shop = make_shop(LINKSHOP_WITHDRAWAL_AUTO_APPROVE_CENTS="3000")
    assert shop.config.auto_approve_cents == 3000
    user = _funded(shop)
    big = shop.withdraw(user, 5000, key="big").json
    shop.jobs_at(utcnow())
    assert (_status(shop, big)["status"], _status(shop, big)["reasons"]) == ("review", ["over the auto-approval limit"])
    # risk may still decide it (it assesses every withdrawal, required or not)
    _assess(shop, big, "approve", utcnow())
    shop.jobs_at(utcnow())
    assert _status(shop, big)["status"] == "paid"


def test_with_risk_required_nothing_is_approved_or_paid_before_risk_approves(required):
    shop = required
    user = _funded(shop, "usr_wait")
    w = shop.withdraw(user, 2000, key="w").json
    _jobs_for_a_week(shop)
    got = _status(shop, w)
    assert (got["status"], got["decided_by"], got["paid_at"]) == ("requested", None, None)
    assert shop.balances("user:usr_wait") == (0, 10000 - 2100, 0)
    assert shop.account("user:usr_wait")["reserved_cents"] == 2100
    assert _withdrawal_events(shop) == ["requested"]
    assert shop.account("payouts")["accounts"] == []  # not a cent left

    _assess(shop, w, "approve", utcnow())
    got = _status(shop, w)
    assert (got["status"], got["decided_by"], got["reasons"]) == ("approved", "risk", ["risk says approve"])
    shop.jobs_at(utcnow())
    assert _status(shop, w)["status"] == "paid"
    assert shop.balances("user:usr_wait") == (0, 10000 - 2100, 0)
    assert shop.account("user:usr_wait")["reserved_cents"] == 0
    assert shop.account("payouts")["accounts"][0]["balance_cents"] == 2000
    assert _withdrawal_events(shop) == ["requested", "approved", "paid"]
    assert shop.verify()["ok"]
    assert "withdrawal_policy" not in job_names(shop.system, "payout")


def test_with_risk_required_a_rejected_withdrawal_returns_its_reservation(required):
    shop = required
    user = _funded(shop, "usr_rej")
    w = shop.withdraw(user, 5000, key="w").json
    assert shop.balances("user:usr_rej") == (0, 10000 - 5100, 0)
    _assess(shop, w, "reject", utcnow())
    _jobs_for_a_week(shop)
    got = _status(shop, w)
    assert (got["status"], got["decided_by"], got["reasons"]) == ("rejected", "risk", ["risk says reject"])
    assert shop.balances("user:usr_rej") == (0, 10000, 0)
    assert shop.account("user:usr_rej")["reserved_cents"] == 0
    assert _withdrawal_events(shop) == ["requested", "rejected"]
    # the whole balance can be asked for again
    again = shop.withdraw(user, 10000 - 100, key="again")
    assert again.status_code == 201, again.json
    assert shop.verify()["ok"]


def test_with_risk_required_review_waits_for_the_operators_answer(required):
    shop = required
    user = _funded(shop, "usr_rev")
    w = shop.withdraw(user, 3000, key="w").json
    t = utcnow()
    _assess(shop, w, "review", t)
    _jobs_for_a_week(shop)
    got = _status(shop, w)
    assert (got["status"], got["reasons"]) == ("review", ["risk says review"])
    assert shop.balances("user:usr_rev") == (0, 10000 - 3100, 0)
    review_queue = shop.payout.get("/payout/v1/withdrawals?status=review", headers=shop.admin).json["items"]
    assert [x["id"] for x in review_queue] == [w["id"]]
    _assess(shop, w, "approve", t + timedelta(seconds=30))  # the operator approved it in risk
    shop.jobs_at(utcnow())
    assert _status(shop, w)["status"] == "paid"
    assert shop.balances("user:usr_rev") == (0, 10000 - 3100, 0)

    second = shop.withdraw(user, 2000, key="second").json
    _assess(shop, second, "review", t + timedelta(seconds=60))
    _assess(shop, second, "reject", t + timedelta(seconds=90))  # the operator rejected it in risk
    _jobs_for_a_week(shop)
    assert _status(shop, second)["status"] == "rejected"
    assert shop.balances("user:usr_rev") == (0, 10000 - 3100, 0)
    assert shop.account("user:usr_rev")["reserved_cents"] == 0
    assert shop.verify()["ok"]


@pytest.mark.parametrize("final", ["approve", "reject"])
def test_duplicated_and_reordered_assessments_change_nothing(required, final):
    """The operator's final answer (at t+30s) arrives before the rules' review (at t) and both
    arrive again, with the same and with new event ids: one approval or one rejection, one
    reservation taken and given back once."""
    shop = required
    user = _funded(shop, "usr_dup")
    w = shop.withdraw(user, 4000, key="w").json
    t = utcnow()
    later = _assess(shop, w, final, t + timedelta(seconds=30))
    earlier = _assess(shop, w, "review", t)  # older, arriving late
    for env in (later, earlier):
        _assess(shop, w, env["payload"]["decision"], t, id=env["id"])  # the same event again
    _assess(shop, w, final, t + timedelta(seconds=30))  # the same answer under a new id
    _assess(shop, w, "review", t)
    _assess(shop, w, "approve" if final == "reject" else "reject", t + timedelta(seconds=10))  # stale, opposite
    _jobs_for_a_week(shop)
    got = _status(shop, w)
    if final == "approve":
        assert got["status"] == "paid"
        assert _withdrawal_events(shop) == ["requested", "approved", "paid"]
        assert shop.account("payouts")["accounts"][0]["balance_cents"] == 4000
    else:
        assert got["status"] == "rejected"
        assert _withdrawal_events(shop) == ["requested", "rejected"]
        assert shop.account("payouts")["accounts"] == []
    assert shop.balances("user:usr_dup") == (0, 10000 - (4100 if final == "approve" else 0), 0)
    assert shop.account("user:usr_dup")["reserved_cents"] == 0
    # a rejection after the money left changes nothing either
    _assess(shop, w, "reject", t + timedelta(days=1))
    assert _status(shop, w)["status"] == got["status"]
    assert shop.account("user:usr_dup")["reserved_cents"] == 0
    assert shop.verify()["ok"]


def test_an_assessment_before_its_withdrawal_is_known_waits(required):
    """Risk cannot answer before payout asked, but a redelivered or misrouted assessment for an
    unknown withdrawal is retried, never applied to nothing and never dropped silently."""
    shop = required
    sent = _assess(shop, {"id": "wd_unknown"}, "approve", utcnow())
    # retried until the bus gave up, then dead-lettered: never applied, never dropped
    dead = [json.loads(body) for body in shop.system.bus.dead["payout"]]
    assert [e["id"] for e in dead] == [sent["id"]], "an assessment of an unknown withdrawal must not vanish"
    assert _withdrawal_events(shop) == []


def test_with_risk_required_the_operator_overrides_risks_review_not_its_silence(required):
    from tests.kit import assert_error
    shop = required
    user = _funded(shop, "usr_op")
    w = shop.withdraw(user, 2000, key="w").json
    post = shop.payout.post
    assert_error(post(f"/payout/v1/withdrawals/{w['id']}/approve", headers=shop.admin), 409, "awaiting_risk")
    _jobs_for_a_week(shop)
    assert _status(shop, w)["status"] == "requested"
    _assess(shop, w, "review", utcnow())
    ok = post(f"/payout/v1/withdrawals/{w['id']}/approve", json={"reason": "known distributor"}, headers=shop.admin)
    assert ok.status_code == 200 and (ok.json["status"], ok.json["decided_by"]) == ("approved", "admin")
    shop.jobs_at(utcnow())
    assert _status(shop, w)["status"] == "paid"
    # rejecting what risk has not looked at yet is always allowed: it pays nothing
    other = shop.withdraw(user, 1000, key="other").json
    no = post(f"/payout/v1/withdrawals/{other['id']}/reject", headers=shop.admin)
    assert no.status_code == 200 and no.json["status"] == "rejected"
    _assess(shop, other, "approve", utcnow())  # risk's answer arriving afterwards changes nothing
    _jobs_for_a_week(shop)
    assert _status(shop, other)["status"] == "rejected"
    assert shop.balances("user:usr_op") == (0, 10000 - 2100, 0)
    assert shop.account("user:usr_op")["reserved_cents"] == 0
