"""Risk over the real processes (gunicorn + workers, PostgreSQL, RabbitMQ), with
LINKSHOP_RISK_REQUIRED=true as the whole suite runs (and production): delivery sells the
reserved keys only once risk approved, an operator decides what risk holds for review, a
risk worker that is down delays orders without losing any, and payout pays only the
withdrawals risk approved.

Every rule change a test makes is undone by that test, and every source it screens (emails,
devices, forwarded addresses) is its own, so the other tests' orders are not touched."""
from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from shared import topology

from .conftest import TAP_QUEUE
from .helpers import HTTP_TIMEOUT, eventually, fund_user

BLOCKED_NET = "198.51.100.0/24"  # TEST-NET-2: nobody else in the suite orders from it


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Risk:
    """The operator's side of risk: decisions, the review queue, rules, the blocklist."""

    def __init__(self, stack, admin_token: str):
        self.base = f"{stack.url('risk')}/risk/v1"
        self.headers = _bearer(admin_token)

    def call(self, method: str, path: str, expect: int = 200, **kw) -> dict:
        r = requests.request(method, f"{self.base}{path}", headers=self.headers, timeout=HTTP_TIMEOUT, **kw)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else {}

    def decisions(self, **query) -> list[dict]:
        return self.call("GET", "/decisions", params=query)["items"]

    def wait_decision(self, timeout: float = 20.0, **query) -> dict:
        """The one decision matching ``query`` once risk has made it."""
        items = eventually(lambda: self.decisions(**query), timeout, 0.1, f"risk never decided {query}")
        assert len(items) == 1, items
        return items[0]

    def order_decision(self, order: dict, timeout: float = 20.0) -> dict:
        return self.wait_decision(timeout, order_no=order["order_no"], kind="order")

    def decide(self, decision: dict, verdict: str, note: str | None = None) -> dict:
        return self.call("POST", f"/decisions/{decision['id']}/{verdict}", json={"note": note} if note else None)

    def block(self, kind: str, value: str, reason: str = "integration test") -> dict:
        return self.call("POST", "/blocklist", 201, json={"kind": kind, "value": value, "reason": reason})

    def unblock(self, entry: dict) -> None:
        requests.delete(f"{self.base}/blocklist/{entry['id']}", headers=self.headers, timeout=HTTP_TIMEOUT)

    def rule(self, name: str) -> dict:
        return self.call("GET", f"/rules/{name}")

    def set_rule(self, name: str, **body) -> dict:
        return self.call("PUT", f"/rules/{name}", json=body)


@pytest.fixture(scope="module")
def risk(stack, run) -> Risk:
    return Risk(stack, run.env["LINKSHOP_ADMIN_TOKEN"])


@pytest.fixture
def stocked(shop):
    """A merchant and a product with ``n`` keys in delivery's vault, the catalog seeing them."""
    def make(n: int, **fields):
        merchant = shop.create_merchant()
        product = shop.create_product(merchant, **fields)
        keys = shop.new_keys(n, "RISK")
        assert shop.import_keys(merchant, product["id"], keys) == {"imported": n, "duplicates": 0, "rejected": 0}
        shop.wait_catalog(product["id"], stock=n)
        return merchant, product, keys
    return make


def place(shop, product: dict, *, quantity: int = 1, email: str | None = None, ip: str | None = None,
          device_id: str | None = None) -> dict:
    """An order as a buyer places it; ``ip`` arrives as the ingress forwards it (X-Forwarded-For)."""
    body = {"product_id": product["id"], "quantity": quantity,
            "email": email or f"risk-{secrets.token_hex(4)}@example.com"}
    if device_id:
        body["device_id"] = device_id
    headers = {"X-Forwarded-For": ip} if ip else {}
    r = requests.post(f"{shop.delivery}/delivery/v1/orders", json=body, headers=headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 201, f"order: {r.status_code} {r.text}"
    shop.credential_sink.append(r.json()["access_token"])
    return r.json()


def pay(shop, order: dict, *outcomes: str) -> str:
    r = shop.pay(order)
    assert r.status_code == 200, r.text
    outcome = r.json()["outcome"]
    assert outcome in outcomes, f"{order['order_no']}: payment outcome {outcome}, expected one of {outcomes}"
    return outcome


def view(shop, order: dict) -> dict:
    r = shop.get_order(order["order_no"], order["access_token"])
    assert r.status_code == 200, r.text
    return r.json()


def stays(shop, order: dict, status: str, seconds: float) -> dict:
    """The order is in ``status`` and still is ``seconds`` later, its keys never shown meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        v = view(shop, order)
        assert v["status"] == status, f"{order['order_no']} left {status}: {v['status']}"
        assert v["keys"] == [], f"{order['order_no']} showed keys while {status}"
        if time.monotonic() > deadline:
            return v
        time.sleep(0.2)


def tapped(broker, type_: str, **match) -> list[dict]:
    """Events of one type on the run's tap whose payload has these values (the tap also holds
    other tests' deliberate poison, which is not JSON)."""
    found = []
    for _, body in broker.peek(TAP_QUEUE):
        try:
            event = json.loads(body)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") == type_ and \
                all((event.get("payload") or {}).get(k) == v for k, v in match.items()):
            found.append(event)
    return found


# -- orders ----------------------------------------------------------------------------------------

def test_honest_orders_are_delivered_once_risk_approves(shop, risk, stocked):
    """Paid at once (risk's answer may come after the payment: the order waits in ``paid``), or
    paid after risk answered: either way delivered, each key to one order."""
    _merchant, product, keys = stocked(3, max_per_order=5)
    at_once = place(shop, product, device_id=f"it-honest-{secrets.token_hex(4)}")
    pay(shop, at_once, "paid", "delivered")
    later = place(shop, product, quantity=2)
    assert risk.order_decision(later)["decision"] == "approve"
    time.sleep(0.5)  # let delivery take risk's answer in: then the payment delivers in its own transaction
    pay(shop, later, "paid", "delivered")
    first, second = shop.wait_delivered(at_once), shop.wait_delivered(later)
    assert len(first["keys"]) == 1 and len(second["keys"]) == 2
    assert sorted(first["keys"] + second["keys"]) == sorted(keys)
    d = risk.order_decision(at_once)
    assert (d["decision"], d["decided_by"], d["reasons"]) == ("approve", "rules", [])
    shop.wait_catalog(product["id"], stock=0, sold=3)


def test_blocklisted_buyers_are_rejected_refunded_and_their_keys_go_back(shop, risk, stocked, broker):
    _merchant, product, keys = stocked(3, max_per_order=5)
    tag = secrets.token_hex(4)
    device = f"it-bad-device-{tag}"
    entries = [risk.block("email", f"fraud.{tag}@example.com", "chargebacks"),
               risk.block("ip", BLOCKED_NET), risk.block("device", device)]
    try:
        # paid at once: rejected whether risk answered before or after the payment, and refunded
        by_email = place(shop, product, email=f"Fraud.{tag}@Example.COM")
        pay(shop, by_email, "paid", "rejected")
        by_device = place(shop, product, device_id=device)
        pay(shop, by_device, "paid", "rejected")
        # not paid: rejected before any payment, the reservation given back at once ...
        by_ip = place(shop, product, ip="198.51.100.23")
        assert shop.wait_status(by_ip, "rejected")["refunded_cents"] == 0
        # ... and a payment that still comes is refunded, never delivered
        pay(shop, by_ip, "rejected", "paid")
        for order, rule_text in ((by_email, "email is blocklisted"), (by_device, "device is blocklisted"),
                                 (by_ip, f"IP is blocklisted ({BLOCKED_NET})")):
            v = shop.wait_status(order, "rejected")
            v = eventually(lambda o=order: (x := view(shop, o))["refunded_cents"] == o["amount_cents"] and x, 20, 0.1,
                           f"{order['order_no']} refunded")
            assert v["keys"] == [] and v["paid_at"] and v["delivered_at"] is None
            d = risk.order_decision(order)
            assert d["decision"] == "reject" and d["reasons"][0]["rule"] == "blocklist", d
            assert rule_text in d["reasons"][0]["reason"], d
            refunds = eventually(lambda o=order: tapped(broker, "delivery.order.refunded", order_no=o["order_no"]),
                                 20, 0.2, f"no refund event for {order['order_no']}")
            assert [(e["payload"]["amount_cents"], e["payload"]["reason"], e["payload"]["delivered"])
                    for e in refunds] == [(order["amount_cents"], "rejected by risk review", False)]
        assert not tapped(broker, "delivery.order.delivered", product_id=product["id"])
        # every reservation went back: one honest buyer takes all three keys
        shop.wait_catalog(product["id"], stock=3)
        honest = place(shop, product, quantity=3)
        pay(shop, honest, "paid", "delivered")
        assert sorted(shop.wait_delivered(honest)["keys"]) == sorted(keys)
    finally:
        for entry in entries:
            risk.unblock(entry)


def test_review_waits_in_paid_until_the_operator_decides(shop, risk, stocked):
    """The operator makes a second order from one device a case for review (velocity_device
    limit 1): it waits in ``paid`` until approved in /risk/v1/decisions/<id>/approve; the
    next one, rejected there, is refunded."""
    _merchant, product, keys = stocked(3)
    device = f"it-review-{secrets.token_hex(4)}"
    before = risk.rule("velocity_device")
    risk.set_rule("velocity_device", params={"limit": 1})
    try:
        first = place(shop, product, device_id=device)
        pay(shop, first, "paid", "delivered")
        assert shop.wait_delivered(first)["keys"]
        second = place(shop, product, device_id=device)
        pay(shop, second, "paid")  # nothing is delivered before the operator says so
        d = risk.order_decision(second)
        assert (d["decision"], d["status"]) == ("review", "open")
        # (other tests' unpaid orders from the suite's shared addresses may add recent_unpaid)
        assert "velocity_device" in [r["rule"] for r in d["reasons"]]
        assert d["id"] in [x["id"] for x in risk.decisions(status="review", kind="order", per_page=200)]
        stays(shop, second, "paid", 2.0)  # long after delivery learned of the review

        decided = risk.decide(d, "approve", note="known customer")
        assert (decided["decision"], decided["decided_by"], decided["status"]) == ("approve", "operator", "final")
        assert decided["note"] == "known customer" and decided["rules_decision"] == "review"
        delivered = shop.wait_delivered(second)
        assert len(delivered["keys"]) == 1 and delivered["keys"][0] in keys
        risk.call("POST", f"/decisions/{d['id']}/reject", 409)  # a final decision stands

        third = place(shop, product, device_id=device)
        pay(shop, third, "paid")
        d3 = risk.order_decision(third)
        assert d3["decision"] == "review"
        stays(shop, third, "paid", 1.0)
        risk.decide(d3, "reject")
        v = shop.wait_status(third, "rejected")
        assert v["keys"] == [] and v["refunded_cents"] == third["amount_cents"]
        shop.wait_catalog(product["id"], stock=1)  # the third's key is back for sale
    finally:
        risk.set_rule("velocity_device", params=before["params"], score=before["score"], enabled=before["enabled"])


def test_a_rejected_order_is_no_sale_in_the_catalog(shop, risk, stocked):
    """A paid order rejected by risk is refunded before any key was sold: the catalog's sale
    count must not drop for it."""
    _merchant, product, _keys = stocked(1)
    device = f"it-bad-device-{secrets.token_hex(4)}"
    entry = risk.block("device", device)
    try:
        rejected = place(shop, product, device_id=device)
        pay(shop, rejected, "paid", "rejected")
        shop.wait_status(rejected, "rejected")
        eventually(lambda: view(shop, rejected)["refunded_cents"] == rejected["amount_cents"], 20, 0.1)
    finally:
        risk.unblock(entry)
    honest = place(shop, product)  # its sale reaches the catalog after the refund above did
    pay(shop, honest, "paid", "delivered")
    shop.wait_delivered(honest)
    shop.wait_catalog(product["id"], stock=0, sold=1)


def test_orders_wait_while_risk_is_down_and_are_delivered_when_it_is_back(stack, shop, risk, broker, stocked,
                                                                         workers_running):
    """Risk's worker crashes (SIGKILL): orders placed and paid meanwhile wait in ``paid``, their
    events wait in risk.inbox; once it is back each is assessed and delivered, none lost."""
    _merchant, product, keys = stocked(4)
    stack.kill_worker("risk")
    orders = [place(shop, product) for _ in range(4)]
    for order in orders:
        pay(shop, order, "paid")  # risk cannot have answered
    for order in orders:
        stays(shop, order, "paid", 0.5)
    time.sleep(1.0)
    for order in orders:
        stays(shop, order, "paid", 0)
    assert not risk.decisions(order_no=orders[0]["order_no"])
    waiting, consumers = broker.counts(topology.inbox_queue("risk"))
    assert consumers == 0 and waiting >= 2 * len(orders), (waiting, consumers)  # created + paid of each

    stack.start_worker("risk")
    views = [shop.wait_delivered(order, timeout=30) for order in orders]
    delivered = [key for v in views for key in v["keys"]]
    assert sorted(delivered) == sorted(keys), "a key went to two orders, or an order got none"
    assert {risk.order_decision(o)["decision"] for o in orders} == {"approve"}
    eventually(lambda: broker.counts(topology.inbox_queue("risk"))[0] == 0, 20, 0.2, "risk.inbox drained")
    assert not broker.take(topology.dead_queue("risk"), lambda _p, body: any(
        o["order_no"].encode() in body for o in orders))


# -- withdrawals -----------------------------------------------------------------------------------

class Payout:
    def __init__(self, stack, admin_token: str):
        self.base = f"{stack.url('payout')}/payout/v1"
        self.admin = _bearer(admin_token)

    def withdraw(self, user: dict, amount: int, destination: str) -> dict:
        r = requests.post(f"{self.base}/withdrawals", json={"amount_cents": amount, "destination": destination},
                          headers={**_bearer(user["token"]), "Idempotency-Key": secrets.token_hex(8)},
                          timeout=HTTP_TIMEOUT)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "requested"
        return r.json()

    def withdrawal(self, w: dict) -> dict:
        r = requests.get(f"{self.base}/withdrawals/{w['id']}", headers=self.admin, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, w: dict, status: str, timeout: float = 20.0) -> dict:
        try:
            return eventually(lambda: (x := self.withdrawal(w))["status"] == status and x, timeout, 0.1)
        except AssertionError:
            raise AssertionError(f"withdrawal {w['id']} not {status} within {timeout}s: "
                                 f"{self.withdrawal(w)['status']}") from None

    def balances(self, user: dict) -> tuple[int, int, int]:
        r = requests.get(f"{self.base}/accounts/user:{user['user_id']}", headers=self.admin, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        a = r.json()
        return a["available_cents"], a["reserved_cents"], a["debt_cents"]

    def verify(self) -> dict:
        return requests.get(f"{self.base}/ledger/verify", headers=self.admin, timeout=HTTP_TIMEOUT).json()


def test_payout_pays_only_the_withdrawals_risk_approved(stack, run, shop, risk, broker, workers_running):
    """A withdrawal waits for risk.withdrawal.assessed (payout's own auto-approval is off when
    risk is required); approved, it is paid; in review it waits; rejected by the operator in
    risk, its reservation goes back to available; old or repeated assessments change nothing."""
    payout = Payout(stack, run.env["LINKSHOP_ADMIN_TOKEN"])
    hold = int(run.env.get("LINKSHOP_HOLD_SECONDS", 604800))
    u, v = shop.register_chain(1)[0], shop.register_chain(1)[0]
    for user in (u, v):
        fund_user(broker, hold, user["user_id"], 10000)
    for user in (u, v):
        eventually(lambda x=user: payout.balances(x) == (10000, 0, 0), 30, 0.2, "the commission was never released")
    # risk down: the request waits, neither approved by payout's policy nor paid
    stack.kill_worker("risk")
    w1 = payout.withdraw(u, 2000, f"alipay-u-{secrets.token_hex(4)}")
    time.sleep(3.0)  # payout's policy job (1s) and the sandbox payer (1s) had their chances
    assert payout.withdrawal(w1)["status"] == "requested"
    # nor can payout's operator wave it through before risk has looked at it
    r = requests.post(f"{payout.base}/withdrawals/{w1['id']}/approve", headers=payout.admin, timeout=HTTP_TIMEOUT)
    assert r.status_code == 409 and r.json()["error"]["code"] == "awaiting_risk", r.text
    assert payout.balances(u) == (7900, 2100, 0)
    stack.start_worker("risk")
    paid = payout.wait(w1, "paid")
    assert paid["decided_by"] == "risk"
    d1 = risk.wait_decision(withdrawal_id=w1["id"])
    assert d1["decision"] == "approve" and [r["rule"] for r in d1["reasons"]] == ["withdrawal_new_account"]
    assert payout.balances(u) == (7900, 0, 0)

    # one destination, two accounts: the second one's withdrawal is held for review
    shared = f"bank-shared-{secrets.token_hex(4)}"
    payout.wait(payout.withdraw(v, 2000, shared), "paid")
    w2 = payout.withdraw(u, 3000, shared)
    held = payout.wait(w2, "review")
    assert held["decided_by"] == "risk" and any("destination" in r for r in held["reasons"])
    d2 = risk.wait_decision(withdrawal_id=w2["id"])
    assert d2["decision"] == "review"
    assert [r["rule"] for r in d2["reasons"]] == ["withdrawal_new_account", "withdrawal_shared_destination"]
    time.sleep(1.5)
    assert payout.withdrawal(w2)["status"] == "review"
    assert payout.balances(u) == (4800, 3100, 0)
    risk.decide(d2, "reject", note="destination belongs to someone else")
    rejected = payout.wait(w2, "rejected")
    assert rejected["paid_at"] is None
    assert payout.balances(u) == (7900, 0, 0)  # the reservation is available again

    # the assessments of w2 again (same ids and new ones, oldest last): nothing moves
    assessed = eventually(lambda: len(x := tapped(broker, "risk.withdrawal.assessed", withdrawal_id=w2["id"])) == 2
                          and x, 20, 0.2, "both assessments of w2 on the tap")
    inbox = topology.inbox_queue("payout")
    for event in sorted(assessed, key=lambda e: e["occurred_at"], reverse=True):
        broker.publish(inbox, event, exchange="")
        broker.publish(inbox, {**event, "id": "00000000-0000-4000-8000-" + secrets.token_hex(6)}, exchange="")

    # the operator approves the next one held for review: paid
    w3 = payout.withdraw(u, 1000, shared)
    d3 = risk.wait_decision(withdrawal_id=w3["id"])
    assert d3["decision"] == "review"
    payout.wait(w3, "review")
    risk.decide(d3, "approve")
    payout.wait(w3, "paid")
    eventually(lambda: broker.counts(inbox)[0] == 0, 20, 0.2, "payout.inbox drained")
    assert payout.withdrawal(w2)["status"] == "rejected"
    assert payout.balances(u) == (6800, 0, 0)
    report = payout.verify()
    assert report["ok"] and report["imbalance_cents"] == 0, report
