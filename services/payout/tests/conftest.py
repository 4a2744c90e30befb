import json
from datetime import timedelta
from unittest import mock

import pytest

from services.payout import worker as payout_worker
from services.referral.tests.conftest import ReferralShop
from shared.events import make_envelope, utcnow

DAY = 24 * 3600


class PayoutShop(ReferralShop):
    """The whole embedded Linkshop, seen from payout."""

    def __init__(self, tmp_path, **env):
        # Risk's own rules (same IP, new account...) are not what these tests are about: its
        # inbox is left unconsumed and its decisions are injected by hand where a test needs one,
        # so nothing waits for risk unless a test asks for it.
        env.setdefault("LINKSHOP_RISK_REQUIRED", "false")
        super().__init__(tmp_path, **env)
        hub = self.system.hub
        hub._consumers = [(svc, consumer) for svc, consumer in hub._consumers if svc != "risk"]
        self.payout = self.system.apps["payout"].test_client()
        self.ctx = self.system.apps["payout"].extensions["linkshop"]
        self.db = self.ctx.db
        self.config = self.ctx.extra["config"]

    # -- setting up ------------------------------------------------------------------------------
    def seller(self, levels=(800, 400, 200), price=10000, cost=6000, fee_bps=200, keys=20):
        r = self.catalog.post("/catalog/v1/merchants", json={"name": "M", "email": "m@example.com", "fee_bps": fee_bps},
                              headers=self.admin)
        assert r.status_code == 201, r.json
        merchant = {"Authorization": "Bearer " + r.json["api_key"]}
        self.drain()
        pid = self.product(merchant, price_cents=price, cost_cents=cost,
                           commission={"levels_bps": list(levels), "cap_bps": None})
        self.import_keys(merchant, pid, [f"KEY-{pid}-{i}" for i in range(keys)])
        return merchant, r.json["id"], pid

    def refund(self, merchant, order, quantity=None, reason="buyer asked"):
        body = {"reason": reason} | ({"quantity": quantity} if quantity else {})
        r = self.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refund", json=body, headers=merchant)
        assert r.status_code in (200, 201), r.json
        self.drain()
        return r.json

    # -- time ------------------------------------------------------------------------------------
    def jobs_at(self, when):
        """Run every worker job with payout's clock at ``when`` (a datetime)."""
        with mock.patch.object(payout_worker, "now", lambda: when):
            self.system.hub.run_jobs(force=True)
            self.drain()
            self.system.hub.run_jobs(force=True)  # what the first run's events made due
            self.drain()

    def after_hold(self, extra_s=1):
        return utcnow() + timedelta(seconds=self.config.hold_seconds + extra_s)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def admin_headers(self):
        return self.admin

    def account(self, owner, headers=None, **query):
        r = self.payout.get(f"/payout/v1/accounts/{owner}", query_string=query, headers=headers or self.admin)
        assert r.status_code == 200, r.json
        return r.json

    def balances(self, owner):
        a = self.account(owner)
        return a["pending_cents"], a["available_cents"], a["debt_cents"]

    def split(self, order_no, headers=None):
        r = self.payout.get(f"/payout/v1/orders/{order_no}/split", headers=headers or self.admin)
        assert r.status_code == 200, r.json
        return r.json

    def verify(self):
        r = self.payout.get("/payout/v1/ledger/verify", headers=self.admin)
        assert r.status_code == 200, r.json
        return r.json

    def withdraw(self, headers, amount, destination="CN-BANK-6222-0000-1234", key=None):
        return self.payout.post("/payout/v1/withdrawals", json={"amount_cents": amount, "destination": destination},
                                headers={**headers, "Idempotency-Key": key or f"k-{amount}-{utcnow().timestamp()}"})

    def events(self, type_=None):
        from sqlalchemy import select
        from services.payout.models import outbox
        with self.db.read() as s:
            bodies = s.scalars(select(outbox.table.c.body).order_by(outbox.table.c.id)).all()
        return [e for e in map(json.loads, bodies) if type_ is None or e["type"] == type_]

    # -- hand-made events ------------------------------------------------------------------------
    def inject(self, type_, payload, occurred_at=None, id=None, drain=True):
        env = make_envelope(type_, payload, producer=type_.split(".", 1)[0])
        if occurred_at is not None:
            env["occurred_at"] = occurred_at.isoformat()
        if id is not None:
            env["id"] = id
        self.system.bus.inject("payout", json.dumps(env).encode())
        if drain:
            self.drain()
        return env


@pytest.fixture
def shop(tmp_path):
    return PayoutShop(tmp_path)


@pytest.fixture
def make_shop(tmp_path):
    made = []

    def make(**env):
        made.append(PayoutShop(tmp_path / str(len(made)), **env))
        return made[-1]
    return make
