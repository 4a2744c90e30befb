import hashlib
import hmac
import json

import pytest

from services.embedded import build_embedded

SANDBOX_SECRET = b"sandbox-secret"


class Shop:
    """A fresh embedded Linkshop with the steps a delivery test needs."""

    def __init__(self, tmp_path, **env):
        base = {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_RETRY_DELAYS_MS": "0", "BUS_MAX_ATTEMPTS": "3",
                "LINKSHOP_LOOKUP_RATE_PER_MINUTE": "5"}
        base.update({k: str(v) for k, v in env.items()})
        # A test that sets the risk switch itself is testing the wiring: it decides when risk
        # answers. Every other one lets risk answer right after ordering, as in a real shop.
        self.risk_answers_first = "LINKSHOP_RISK_REQUIRED" not in env
        self.system = build_embedded(base, migrate=False)
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

    def metric(self, name, **labels):
        from prometheus_client import REGISTRY
        return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def shop(tmp_path):
    return Shop(tmp_path)


@pytest.fixture
def make_shop(tmp_path):
    made = []

    def make(**env):
        made.append(Shop(tmp_path / str(len(made)), **env))
        return made[-1]
    return make
