"""A fake Stripe: the three API calls the shop makes (create and retrieve a Checkout Session,
create a Refund), with the secret key as Bearer and Idempotency-Key honoured, a page for the
buyer, and ``pay``, which marks the session paid and POSTs the signed
``checkout.session.completed`` event to the webhook URL until it reads a 2xx, as Stripe does.

Signed as Stripe documents it (docs.stripe.com/webhooks#verify-manually): the header
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the
endpoint's whsec_ secret>``. ``webhook_url`` is set by the test once the shop has its URL
(Stripe has it from the endpoint registered on its dashboard)."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

import requests
from flask import Flask, jsonify, request

from ..gateways import FakeGateway

API_KEY = "sk_test_" + secrets.token_hex(12)
WEBHOOK_SECRET = "whsec_" + secrets.token_hex(16)


def stripe_signature_header(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode("utf-8"), f"{t}.".encode("utf-8") + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def stripe_error(status: int, type_: str, message: str, code: str | None = None):
    return jsonify({"error": {"type": type_, "code": code, "message": message}}), status


class FakeStripe(FakeGateway):
    def __init__(self, api_key: str = API_KEY, webhook_secret: str = WEBHOOK_SECRET):
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.webhook_url: str | None = None
        self.sessions: dict[str, dict] = {}         # by session id
        self.requests: list[dict] = []              # every API call: method, path, headers, form
        self._idempotent: dict[str, tuple] = {}     # Idempotency-Key → (form, response body, status)
        app = Flask("fake-stripe")
        app.add_url_rule("/v1/checkout/sessions", view_func=self._create_session, methods=["POST"])
        app.add_url_rule("/v1/checkout/sessions/<session_id>", view_func=self._retrieve_session, methods=["GET"])
        app.add_url_rule("/v1/refunds", view_func=self._create_refund, methods=["POST"])
        app.add_url_rule("/c/pay/<session_id>", view_func=self._checkout_page, methods=["GET"])
        super().__init__(app)

    def env(self) -> dict:
        return {"LINKSHOP_STRIPE_SECRET_KEY": self.api_key, "LINKSHOP_STRIPE_WEBHOOK_SECRET": self.webhook_secret,
                "LINKSHOP_STRIPE_API_BASE": self.url}

    # -- the API -------------------------------------------------------------------------

    def _authorized(self) -> bool:
        self.requests.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                              "form": request.form.to_dict()})
        return hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {self.api_key}")

    def _replayed(self):
        """Stripe answers a repeated Idempotency-Key with the first answer (and refuses the key
        reused with other parameters). Only answers that did something are kept here."""
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotent:
            form, body, status = self._idempotent[key]
            if form != request.form.to_dict():
                return stripe_error(400, "idempotency_error", "Keys for idempotent requests can only be used "
                                    "with the same parameters they were first used with.")
            return jsonify(body), status
        return None

    def _remember(self, body: dict, status: int = 200):
        if key := request.headers.get("Idempotency-Key"):
            self._idempotent[key] = (request.form.to_dict(), body, status)
        return jsonify(body), status

    def _create_session(self):
        if not self._authorized():
            return stripe_error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****")
        if (replayed := self._replayed()) is not None:
            return replayed
        form = request.form.to_dict()
        currency = form.get("line_items[0][price_data][currency]", "")
        amount = form.get("line_items[0][price_data][unit_amount]", "")
        if form.get("mode") != "payment" or not form.get("success_url"):
            return stripe_error(400, "invalid_request_error", "Missing mode or success_url.", "parameter_missing")
        if len(currency) != 3 or currency != currency.lower():
            return stripe_error(400, "invalid_request_error", "Invalid currency: must be lower-case ISO code.",
                                "parameter_invalid_string")
        if not amount.isdigit() or not form.get("line_items[0][quantity]", "").isdigit():
            return stripe_error(400, "invalid_request_error", "Invalid integer.", "parameter_invalid_integer")
        session_id = "cs_test_" + secrets.token_hex(16)
        session = {
            "id": session_id, "object": "checkout.session", "mode": "payment", "livemode": False,
            "amount_subtotal": int(amount) * int(form["line_items[0][quantity]"]),
            "amount_total": int(amount) * int(form["line_items[0][quantity]"]), "currency": currency,
            "client_reference_id": form.get("client_reference_id"),
            "metadata": {k[len("metadata["):-1]: v for k, v in form.items() if k.startswith("metadata[")},
            "customer": None, "customer_details": None, "currency_conversion": None,
            "payment_intent": None, "payment_status": "unpaid", "status": "open",
            "success_url": form["success_url"], "cancel_url": form.get("cancel_url"),
            "url": f"{self.url}/c/pay/{session_id}",
        }
        self.sessions[session_id] = session
        order_no = session["metadata"].get("order_no") or session["client_reference_id"]
        self.payments[order_no] = {"session_id": session_id, "form": form,
                                   "idempotency_key": request.headers.get("Idempotency-Key"),
                                   "intent_metadata": {k[len("payment_intent_data[metadata]["):-1]: v
                                                       for k, v in form.items()
                                                       if k.startswith("payment_intent_data[metadata][")}}
        return self._remember(session)

    def _retrieve_session(self, session_id):
        if not self._authorized():
            return stripe_error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****")
        session = self.sessions.get(session_id)
        if session is None:
            return stripe_error(404, "invalid_request_error", f"No such checkout.session: '{session_id}'",
                                "resource_missing")
        return jsonify(session)

    def _create_refund(self):
        if not self._authorized():
            return stripe_error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****")
        if (replayed := self._replayed()) is not None:
            return replayed
        if self.fail_refunds:
            self.fail_refunds -= 1
            return stripe_error(500, "api_error", "An unknown error occurred")
        form = request.form.to_dict()
        paid = [s for s in self.sessions.values() if s["payment_intent"] == form.get("payment_intent")]
        if not paid:
            return stripe_error(404, "invalid_request_error", f"No such payment_intent: '{form.get('payment_intent')}'",
                                "resource_missing")
        if self.refuse_refunds:
            return stripe_error(400, "invalid_request_error", f"Charge for {form['payment_intent']} has already "
                                "been refunded.", "charge_already_refunded")
        refunded = sum(int(r["form"]["amount"]) for r in self.refunds
                       if r["form"]["payment_intent"] == paid[0]["payment_intent"])
        if int(form.get("amount", "0")) + refunded > paid[0]["amount_total"]:
            return stripe_error(400, "invalid_request_error", "Refund amount is greater than unrefunded amount.",
                                "amount_too_large")
        refund = {"id": "re_" + secrets.token_hex(12), "object": "refund", "amount": int(form["amount"]),
                  "currency": paid[0]["currency"], "payment_intent": form["payment_intent"], "status": "succeeded",
                  "metadata": {k[len("metadata["):-1]: v for k, v in form.items() if k.startswith("metadata[")}}
        self.refunds.append({"form": form, "idempotency_key": request.headers.get("Idempotency-Key"),
                             "refund": refund})
        return self._remember(refund)

    # -- the buyer and the webhook -------------------------------------------------------

    def _checkout_page(self, session_id):
        session = self.sessions.get(session_id)
        if session is None:
            return "no such session", 404
        return f"<html><body>pay {session['amount_total']} {session['currency']}</body></html>"

    def session_of(self, order_no: str) -> dict:
        return self.sessions[self.payments[order_no]["session_id"]]

    def open(self, pay_url: str) -> requests.Response:
        return requests.get(pay_url, timeout=5)

    def pay(self, order_no: str, **override) -> list[tuple[int, str]]:
        """The buyer pays: the session is complete and paid, and the event sent (unless lost)."""
        session = self.session_of(order_no)
        session.update(payment_status="paid", status="complete",
                       payment_intent=session["payment_intent"] or "pi_" + secrets.token_hex(12),
                       customer_details={"email": "buyer@example.com"})
        if self.lose_notices:
            return []
        return self.notify(self.event(order_no, **override))

    def event(self, order_no: str, type_: str = "checkout.session.completed", **override) -> dict:
        """The event Stripe would send about the order's session, ``override`` changing the session."""
        return {"id": "evt_" + secrets.token_hex(12), "object": "event", "api_version": "2026-10-28.endive",
                "created": int(time.time()), "livemode": False, "pending_webhooks": 1, "type": type_,
                "data": {"object": {**self.session_of(order_no), **override}}}

    def notify(self, event: dict | bytes, secret: str | None = None, timestamp: int | None = None,
               header: str | None = None) -> list[tuple[int, str]]:
        """POST ``event`` signed (with ``secret``, at ``timestamp``), or with ``header`` as the
        whole Stripe-Signature, until a 2xx; the answers read."""
        body = event if isinstance(event, bytes) else json.dumps(event, indent=2).encode()

        def send():
            signed = header if header is not None else stripe_signature_header(
                body, secret or self.webhook_secret, timestamp)
            return requests.post(self.webhook_url, data=body, timeout=5,
                                 headers={"Content-Type": "application/json; charset=utf-8",
                                          "Stripe-Signature": signed, "User-Agent": "Stripe/1.0"})
        return self.deliver(send, lambda r: 200 <= r.status_code < 300)
