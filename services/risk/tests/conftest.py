import json
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest
from sqlalchemy import select

from services.referral.tests.conftest import ReferralShop
from shared.events import make_envelope

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
_seq = count(1)


def at(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


class RiskShop(ReferralShop):
    """The whole embedded Linkshop, with helpers to talk to risk directly (events in, routes)."""

    def __init__(self, tmp_path, **env):
        super().__init__(tmp_path, **env)
        self.risk = self.system.apps["risk"].test_client()
        self.ctx = self.system.apps["risk"].extensions["linkshop"]

    # -- events straight into risk's inbox ----------------------------------------------------
    def send(self, type_, payload, event_id=None, drain=True):
        env = make_envelope(type_, payload, producer=type_.split(".")[0])
        if event_id:
            env["id"] = event_id
        self.system.bus.inject("risk", json.dumps(env).encode())
        if drain:
            self.drain()
        return env

    def created(self, t=0, *, order_no=None, product_id="p1", quantity=1, amount_cents=1000, email="a@example.com",
                ip="81.2.69.160", device_id="dev-1", buyer_user_id=None, ref_code=None, **kw):
        order_no = order_no or f"o{next(_seq):06d}"
        self.send("delivery.order.created", {
            "order_no": order_no, "product_id": product_id, "merchant_id": "m1", "quantity": quantity,
            "amount_cents": amount_cents, "currency": "CNY", "email": email, "buyer_user_id": buyer_user_id,
            "ref_code": ref_code, "client": {"ip": ip, "device_id": device_id, "user_agent": "UA"},
            "created_at": at(t)}, **kw)
        return order_no

    def paid(self, order_no, t=60, payer_account=None, **kw):
        self.send("delivery.order.paid", {"order_no": order_no, "amount_cents": 1000, "currency": "CNY",
                                          "provider": "sandbox", "provider_txn_id": "t" + order_no, "paid_at": at(t),
                                          **({"payer_account": payer_account} if payer_account else {})}, **kw)

    def registered(self, user_id, t=-86400 * 60, *, parent_id=None, ancestors=(), email="u@example.com",
                   ip="81.2.69.160", device_id="dev-1", **kw):
        from services.risk.domain import email_hash
        self.send("referral.user.registered", {
            "user_id": user_id, "parent_id": parent_id, "ancestors": list(ancestors), "email_hash": email_hash(email),
            "client": {"ip": ip, "device_id": device_id}, "registered_at": at(t)}, **kw)

    def accrued(self, order_no, lines, buyer_user_id=None, **kw):
        self.send("referral.commission.accrued", {
            "order_no": order_no, "merchant_id": "m1", "product_id": "p1", "buyer_user_id": buyer_user_id,
            "amount_cents": 1000, "lines": [{"user_id": u, "level": i + 1, "rate_bps": 800, "amount_cents": c}
                                             for i, (u, c) in enumerate(lines)]}, **kw)

    def product_event(self, product_id="p1", price_cents=1000, max_per_order=10, version=1):
        self.send("catalog.product.upserted", {"product_id": product_id, "merchant_id": "m1", "title": "T",
                                               "price_cents": price_cents, "max_per_order": max_per_order,
                                               "status": "active", "version": version})

    # -- what risk said ---------------------------------------------------------------------------
    def published(self, type_=None):
        table = self.ctx.outbox.table
        with self.ctx.db.read() as s:
            bodies = s.scalars(select(table.c.body).order_by(table.c.id)).all()
        events = [json.loads(b) for b in bodies]
        return [e["payload"] for e in events if type_ is None or e["type"] == type_]

    def decision(self, order_no):
        items = self.decisions(order_no=order_no, kind="order")
        assert len(items) == 1, items
        return items[0]

    def decisions(self, **query):
        r = self.risk.get("/risk/v1/decisions", query_string=query, headers=self.admin)
        assert r.status_code == 200, r.json
        return r.json["items"]

    def rules_of(self, order_no):
        return [r["rule"] for r in self.decision(order_no)["reasons"]]

    def set_rule(self, name, **body):
        r = self.risk.put(f"/risk/v1/rules/{name}", json=body, headers=self.admin)
        assert r.status_code == 200, r.json
        return r.json

    def block(self, kind, value, reason=None):
        r = self.risk.post("/risk/v1/blocklist", json={"kind": kind, "value": value, "reason": reason},
                           headers=self.admin)
        assert r.status_code == 201, r.json
        return r.json


@pytest.fixture
def shop(tmp_path):
    return RiskShop(tmp_path)


@pytest.fixture
def make_shop(tmp_path):
    made = []

    def make(**env):
        made.append(RiskShop(tmp_path / str(len(made)), **env))
        return made[-1]
    return make
