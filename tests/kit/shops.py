"""The embedded Linkshop as each service's tests drive it: ``Shop`` (delivery's steps: a
merchant, a product, keys, an order, a payment notice), ``ReferralShop`` (users, invite
chains, commissions), ``PayoutShop`` (the ledger, withdrawals, the jobs' clock) and
``RiskShop`` (events straight into risk's inbox, its decisions and rules). Every one is a
whole system (all five services) on the backend it is given."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from itertools import count

from sqlalchemy import select

from shared.events import make_envelope, utcnow

from .backends import sqlite_backend
from .helpers import payout_clock

SANDBOX_SECRET = b"sandbox-secret"
DAY = 24 * 3600
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
_seq = count(1)


def at(seconds: float = 0) -> str:
    """Risk's tests' clock: ``T0`` + ``seconds``, as an event's ISO 8601 stamp."""
    return (T0 + timedelta(seconds=seconds)).isoformat()


def shop_maker(cls, backend, tmp_path):
    """``make(**env)``: a new ``cls`` shop per call, each in its own directory."""
    made = []

    def make(**env):
        made.append(cls(tmp_path / str(len(made)), backend, **env))
        return made[-1]
    return make


class Shop:
    """A fresh embedded Linkshop with the steps a delivery test needs."""

    def __init__(self, tmp_path, backend=None, **env):
        """``tmp_path``: this shop's own directory (its SQLite files, or on PostgreSQL the
        name of its isolated state); ``backend``: ``tests.kit.backends`` (SQLite if None)."""
        self.backend = backend or sqlite_backend()
        self.var_dir = tmp_path
        base = {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_RETRY_DELAYS_MS": "0", "BUS_MAX_ATTEMPTS": "3",
                "LINKSHOP_LOOKUP_RATE_PER_MINUTE": "5"}
        base.update({k: str(v) for k, v in env.items()})
        # A test that sets the risk switch itself is testing the wiring: it decides when risk
        # answers. Every other one lets risk answer right after ordering, as in a real shop.
        self.risk_answers_first = "LINKSHOP_RISK_REQUIRED" not in env
        self.system = self.backend.build(base)
        self.catalog = self.system.apps["catalog"].test_client()
        self.delivery = self.system.apps["delivery"].test_client()
        self.admin = {"Authorization": "Bearer " + self.system.settings["catalog"].admin_token}

    def drain(self):
        self.system.hub.drain()

    def jobs(self):
        self.system.hub.run_jobs(force=True)
        self.drain()

    def merchant(self, name="Shop A"):
        r = self.catalog.post("/catalog/v1/merchants", json={"name": name, "email": "m@example.com"},
                              headers=self.admin)
        assert r.status_code == 201, r.json
        self.drain()
        return {"Authorization": "Bearer " + r.json["api_key"]}, r.json["id"]

    def product(self, merchant, **fields):
        body = {"title": "Game card", "price_cents": 1000, "instructions": "Redeem in the game"} | fields
        r = self.catalog.post("/catalog/v1/products", json=body, headers=merchant)
        assert r.status_code == 201, r.json
        self.drain()
        return r.json["id"]

    def import_keys(self, merchant, product_id, keys, reusable=False):
        r = self.delivery.post(f"/delivery/v1/products/{product_id}/keys", json={"keys": keys, "reusable": reusable},
                               headers=merchant)
        assert r.status_code == 201, r.json
        return r.json

    def order(self, product_id, quantity=1, email="buyer@example.com", **extra):
        r = self.delivery.post("/delivery/v1/orders",
                               json={"product_id": product_id, "quantity": quantity, "email": email, **extra})
        if r.status_code == 201 and self.risk_answers_first:
            self.drain()  # risk answers long before a person has paid (design §5)
        return r

    def notify(self, order_no, amount_cents, txn_id="txn-1", status="paid", currency="CNY", secret=SANDBOX_SECRET,
               signature=None):
        body = json.dumps({"order_no": order_no, "amount_cents": amount_cents, "currency": currency,
                           "txn_id": txn_id, "status": status}).encode()
        sig = signature if signature is not None else hmac.new(secret, body, hashlib.sha256).hexdigest()
        return self.delivery.post("/delivery/v1/payments/sandbox/notify", data=body,
                                  headers={"X-Sandbox-Signature": sig, "Content-Type": "application/json"})

    def view(self, order):
        r = self.delivery.get(f"/delivery/v1/orders/{order['order_no']}?token={order['access_token']}")
        assert r.status_code == 200, r.json
        return r.json

    def buy(self, product_id, quantity=1, txn_id=None, **extra):
        r = self.order(product_id, quantity, **extra)
        assert r.status_code == 201, r.json
        order = r.json
        paid = self.notify(order["order_no"], order["amount_cents"], txn_id or "txn-" + order["order_no"])
        assert paid.status_code == 200, paid.json
        return order

    def rebuild(self, **env):
        """Another embedded system on this shop's databases (a restart), with ``env`` changed."""
        base = {"LINKSHOP_VAR_DIR": str(self.var_dir), "BUS_RETRY_DELAYS_MS": "0"}
        return self.backend.build(base | {k: str(v) for k, v in env.items()})

    def metric(self, name, **labels):
        from prometheus_client import REGISTRY
        return REGISTRY.get_sample_value(name, labels) or 0.0


class ReferralShop(Shop):
    def __init__(self, tmp_path, backend=None, **env):
        super().__init__(tmp_path, backend, **env)
        self.referral = self.system.apps["referral"].test_client()

    def user(self, email, invite_code=None, **extra):
        r = self.referral.post("/referral/v1/users", json={"email": email, "invite_code": invite_code, **extra})
        assert r.status_code == 201, r.json
        return r.json

    def chain(self, n, prefix="u"):
        users, code = [], None
        for i in range(n):
            users.append(self.user(f"{prefix}{i}@example.com", code))
            code = users[-1]["invite_code"]
        return users

    def as_user(self, user):
        return {"Authorization": "Bearer " + user["token"]}

    def buy_as(self, pid, user=None, quantity=1, ref_code=None, email="buyer@example.com"):
        headers = self.as_user(user) if user else {}
        body = {"product_id": pid, "quantity": quantity, "email": email}
        if ref_code:
            body["ref_code"] = ref_code
        r = self.delivery.post("/delivery/v1/orders", json=body, headers=headers)
        assert r.status_code == 201, r.json
        order = r.json
        assert self.notify(order["order_no"], order["amount_cents"], "t-" + order["order_no"]).status_code == 200
        self.drain()
        return order

    def lines(self, user):
        r = self.referral.get(f"/referral/v1/users/{user['user_id']}/commissions", headers=self.as_user(user))
        assert r.status_code == 200, r.json
        return r.json["items"]

    def explain(self, order, user):
        r = self.referral.get(f"/referral/v1/orders/{order['order_no']}/explain?user_id={user['user_id']}",
                              headers=self.as_user(user))
        assert r.status_code == 200, r.json
        return r.json

    def commission_product(self, levels=(800, 400, 200), price=10000, cost=6000, cap_bps=None, keys=20, fee_bps=None):
        r = self.catalog.post("/catalog/v1/merchants", json={"name": "M", "email": "m@example.com",
                                                              **({"fee_bps": fee_bps} if fee_bps is not None else {})},
                              headers=self.admin)
        merchant = {"Authorization": "Bearer " + r.json["api_key"]}
        self.drain()
        pid = self.product(merchant, price_cents=price, cost_cents=cost,
                           commission={"levels_bps": list(levels), "cap_bps": cap_bps})
        self.import_keys(merchant, pid, [f"KEY-{pid}-{i}" for i in range(keys)])
        return merchant, pid


class PayoutShop(ReferralShop):
    """The whole embedded Linkshop, seen from payout."""

    def __init__(self, tmp_path, backend=None, **env):
        # Risk's own rules (same IP, new account...) are not what these tests are about: its
        # inbox is left unconsumed and its decisions are injected by hand where a test needs one,
        # so nothing waits for risk unless a test asks for it.
        env.setdefault("LINKSHOP_RISK_REQUIRED", "false")
        super().__init__(tmp_path, backend, **env)
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
        with payout_clock(when):
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


class RiskShop(ReferralShop):
    """The whole embedded Linkshop, with helpers to talk to risk directly (events in, routes)."""

    def __init__(self, tmp_path, backend=None, **env):
        super().__init__(tmp_path, backend, **env)
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
