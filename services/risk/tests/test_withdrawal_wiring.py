"""Risk and payout together, as deployed (LINKSHOP_RISK_REQUIRED=true): a withdrawal waits for
risk.withdrawal.assessed; what risk holds for review waits for the operator's answer in risk;
approved, it is paid; rejected, its reservation goes back; an assessment heard again, or an
older one heard late, changes nothing. Without the switch payout approves by itself."""
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.events import utcnow
from tests.kit import payout_clock

DAY = 86400


class Both:
    """The embedded shop seen from risk and payout at once."""

    def __init__(self, shop):
        self.shop = shop
        self.payout = shop.system.apps["payout"].test_client()
        self.payout_ctx = shop.system.apps["payout"].extensions["linkshop"]

    def jobs_at(self, when):
        with payout_clock(when):
            for _ in range(2):  # what the first run's events made due
                self.shop.system.hub.run_jobs(force=True)
                self.shop.drain()

    def earner(self, email, cents_levels=(3000,)):
        """A user whose upline commission on one real purchase has been released."""
        shop = self.shop
        _, pid = shop.commission_product(levels=cents_levels, cost=0)
        up = shop.user(email, device_id=f"phone-{email}")
        buyer = shop.user(f"buyer-{email}", up["invite_code"], device_id=f"phone-buyer-{email}")
        order = shop.buy_as(pid, buyer, email=f"buyer-{email}")
        assert shop.view(order)["status"] == "delivered"
        self.jobs_at(utcnow() + timedelta(seconds=self.payout_ctx.extra["config"].hold_seconds + 1))
        assert self.available(up) == 3000
        return up

    def account(self, user):
        r = self.payout.get(f"/payout/v1/accounts/user:{user['user_id']}", headers=self.shop.admin)
        assert r.status_code == 200, r.json
        return r.json

    def available(self, user):
        return self.account(user)["available_cents"]

    def withdraw(self, user, amount, destination, key):
        r = self.payout.post("/payout/v1/withdrawals", json={"amount_cents": amount, "destination": destination},
                             headers={**self.shop.as_user(user), "Idempotency-Key": key})
        assert r.status_code == 201, r.json
        return r.json

    def status(self, w):
        return self.payout.get(f"/payout/v1/withdrawals/{w['id']}", headers=self.shop.admin).json

    def assessed_events(self, w):
        table = self.shop.ctx.outbox.table
        with self.shop.ctx.db.read() as s:
            bodies = s.scalars(select(table.c.body).where(table.c.type == "risk.withdrawal.assessed")
                               .order_by(table.c.id)).all()
        return [e for e in map(json.loads, bodies) if e["payload"]["withdrawal_id"] == w["id"]]


@pytest.fixture
def both(make_shop):
    return Both(make_shop(LINKSHOP_RISK_REQUIRED="true"))


def test_what_risk_approves_is_paid_what_it_holds_waits_for_the_operator(both):
    shop = both.shop
    # registered long ago and earned long ago: nothing to say against it
    old = both.earner("old@example.com")
    with shop.ctx.db.write() as s:
        from services.risk.models import Earning, User
        s.get(User, old["user_id"]).registered_at -= timedelta(days=90)
        for e in s.scalars(select(Earning).where(Earning.user_id == old["user_id"])):
            e.created_at -= timedelta(days=30)
    w = both.withdraw(old, 1000, "alipay:old", "w-old")
    shop.drain()
    assert shop.decisions(withdrawal_id=w["id"])[0]["decision"] == "approve"
    assert both.status(w)["status"] == "approved"
    both.jobs_at(utcnow())
    assert (both.status(w)["status"], both.status(w)["decided_by"]) == ("paid", "risk")

    # a new account withdrawing what it has just earned: held for the operator
    new = both.earner("new@example.com")
    held = both.withdraw(new, 1500, "alipay:new", "w-new")
    shop.drain()
    d = shop.decisions(withdrawal_id=held["id"])[0]
    assert d["decision"] == "review"
    assert [r["rule"] for r in d["reasons"]] == ["withdrawal_new_account", "withdrawal_fast"]
    for days in (0, 1, 7):
        both.jobs_at(utcnow() + timedelta(days=days))
    assert both.status(held)["status"] == "review"
    assert both.account(new)["reserved_cents"] == 1600
    r = shop.risk.post(f"/risk/v1/decisions/{d['id']}/approve", json={"note": "called them"}, headers=shop.admin)
    assert r.status_code == 200, r.json
    shop.drain()
    assert both.status(held)["status"] == "approved"
    both.jobs_at(utcnow())
    assert both.status(held)["status"] == "paid"
    assert (both.available(new), both.account(new)["reserved_cents"]) == (3000 - 1600, 0)

    # the next one held too, and rejected by the operator: the reservation comes back
    second = both.withdraw(new, 1000, "alipay:new", "w-new-2")
    shop.drain()
    d2 = shop.decisions(withdrawal_id=second["id"])[0]
    assert d2["decision"] == "review"
    assert both.available(new) == 3000 - 1600 - 1100
    shop.risk.post(f"/risk/v1/decisions/{d2['id']}/reject", headers=shop.admin)
    shop.drain()
    assert (both.status(second)["status"], both.status(second)["decided_by"]) == ("rejected", "risk")
    assert (both.available(new), both.account(new)["reserved_cents"]) == (3000 - 1600, 0)

    # every assessment again, newest first, under the same ids: nothing moves
    for w_ in (second, held):
        for event in reversed(both.assessed_events(w_)):
            shop.system.bus.inject("payout", json.dumps(event).encode())
    # ... and the rules' review of `second` under a new id, heard after the operator's reject
    review = both.assessed_events(second)[0]
    assert review["payload"]["decision"] == "review"
    shop.system.bus.inject("payout", json.dumps({**review, "id": "00000000-0000-4000-8000-000000000001"}).encode())
    shop.drain()
    both.jobs_at(utcnow())
    assert [both.status(x)["status"] for x in (w, held, second)] == ["paid", "paid", "rejected"]
    assert (both.available(new), both.account(new)["reserved_cents"]) == (3000 - 1600, 0)
    assert not shop.system.bus.dead["payout"]
    verify = both.payout.get("/payout/v1/ledger/verify", headers=shop.admin).json
    assert verify["ok"], verify


def test_while_risk_is_silent_nothing_is_paid_and_its_answer_is_not_lost(both):
    shop = both.shop
    user = both.earner("patient@example.com")
    hub = shop.system.hub
    risk = [c for c in hub._consumers if c[0] == "risk"]
    hub._consumers = [c for c in hub._consumers if c[0] != "risk"]
    w = both.withdraw(user, 1000, "alipay:patient", "w")
    for days in (0, 1, 7):
        both.jobs_at(utcnow() + timedelta(days=days))
    assert both.status(w)["status"] == "requested"  # payout's own limit does not apply
    hub._consumers += risk
    shop.drain()
    # a new account withdrawing what it has just earned: risk holds it for the operator
    assert both.status(w)["status"] == "review"
    assert len(both.assessed_events(w)) == 1


def test_without_risk_required_payout_approves_what_risk_has_not_assessed(make_shop):
    both = Both(make_shop(LINKSHOP_RISK_REQUIRED="false"))
    shop = both.shop
    user = both.earner("hasty@example.com")
    hub = shop.system.hub
    hub._consumers = [c for c in hub._consumers if c[0] != "risk"]  # risk never answers
    w = both.withdraw(user, 1000, "alipay:hasty", "w")
    both.jobs_at(utcnow())
    assert (both.status(w)["status"], both.status(w)["decided_by"]) == ("paid", "auto")
