"""Stripe: a Checkout Session per order, the webhook that says it was paid, refunds by API.

``start`` creates a Checkout Session (``POST /v1/checkout/sessions``, form-encoded, the secret
key as Bearer) for the whole order as one line, with our order number as its
``client_reference_id`` and in its (and its PaymentIntent's) metadata; the Idempotency-Key
``checkout-<order_no>`` makes a repeated create return the same session. The buyer is sent to
the session's ``url``; its id is the order's ``payment_ref``. Adaptive Pricing is turned off:
the buyer pays the order's own amount and currency, which is what the notice must say.

The webhook: ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]``, each ``v1`` a hex
HMAC-SHA256 under the endpoint's signing secret over ``"<t>.<raw body>"``; any ``v1`` that
matches will do (Stripe sends two while a secret is rolled). A ``t`` more than five minutes
from our clock is refused, so a captured notice cannot be replayed later. Of the events,
``checkout.session.completed`` and ``checkout.session.async_payment_succeeded`` pay an order
when the session's ``payment_status`` is ``paid``; ``async_payment_failed`` and ``expired``
are notices that it was not paid. Stripe sends every event the endpoint is subscribed to, and
resends each until it reads a 2xx: an event that is not about one of our sessions is
acknowledged without effect (``IgnoredNotice``, counted as ``ignored``).

``query`` reads the session back (``GET /v1/checkout/sessions/<id>``); ``refund`` is
``POST /v1/refunds`` on the session's PaymentIntent, our refund number as Idempotency-Key,
so a refund retried after a lost answer is never made twice. Every call sends a pinned
``Stripe-Version``, so the answers keep the shape read here whatever the account's default.

Amounts: Stripe counts in the currency's minor unit, which is our cents only for two-decimal
currencies; ``CURRENCIES`` lists the ones taken, so an order in yen (zero-decimal) or dinars
(three-decimal) is refused when ordering rather than charged a hundred times too much.

Plain ``requests`` and ``hmac`` rather than the ``stripe`` SDK: three form-encoded calls and
one HMAC are all we need, and this way the calls go through the shop's own HTTP session and
timeouts, and fail the same way, like every other provider's (the SDK brings its own HTTP
client, retries and a new pinned API version every few months).

Settings: ``LINKSHOP_STRIPE_SECRET_KEY`` (``sk_...`` or a restricted ``rk_...`` allowed to
create Checkout Sessions and Refunds), ``LINKSHOP_STRIPE_WEBHOOK_SECRET`` (the endpoint's
``whsec_...``; subscribe the endpoint ``<public URL>/delivery/v1/payments/stripe/notify`` to
the four ``checkout.session.*`` events above), and optionally ``LINKSHOP_STRIPE_API_BASE``
(default ``https://api.stripe.com``; tests point it at a local fake).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from urllib.parse import quote

from shared.config import ConfigError

from . import (TIMEOUT, Answer, BadNotice, Checkout, IgnoredNotice, Notice, NoticeRequest, PaymentStart, Provider,
               ProviderError, RefundRequest, RefundResult, SignatureError, settings_of)

API_BASE = "https://api.stripe.com"
API_VERSION = "2026-10-28.endive"  # the version stripe-python 16.1.0 pins; the fields read here are in it
TOLERANCE_S = 300                  # Stripe's own libraries' default

# Two-decimal currencies Stripe charges in (docs.stripe.com/currencies): their minor unit is
# our cent. Left out on purpose: zero-decimal (JPY, KRW, VND, CLP, XAF...), three-decimal (BHD,
# JOD, KWD, OMR, TND) and Stripe's special cases (ISK, HUF, TWD, UGX).
CURRENCIES = frozenset("""
    USD EUR GBP CNY HKD SGD AUD NZD CAD CHF SEK NOK DKK PLN CZK RON BGN TRY ILS AED SAR QAR
    INR IDR MYR THB PHP MXN BRL ZAR EGP NGN KES MAD PKR BDT LKR UAH KZT GEL MOP
""".split())

PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
UNPAID_EVENTS = {"checkout.session.async_payment_failed": "failed", "checkout.session.expired": "expired"}
_SECRETS = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_*]+")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _header(headers, name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict (not HTTP headers) with the name in another case
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value or ""


def _scrub(text) -> str:
    """Stripe's messages may quote the key they were called with (masked, but still)."""
    return _SECRETS.sub("[redacted]", str(text))[:300]


class StripeProvider(Provider):
    name = "stripe"
    pay_types = ("checkout",)
    currencies = CURRENCIES
    notice_methods = ("POST",)

    def __init__(self, secret_key: str, webhook_secret: str, http, api_base: str = API_BASE,
                 clock=time.time, tolerance_s: int = TOLERANCE_S):
        self._secret_key, self._webhook_secret, self._http = secret_key, webhook_secret, http
        self.api_base, self._clock, self._tolerance_s = api_base.rstrip("/"), clock, tolerance_s

    # -- the buyer pays ------------------------------------------------------------------

    def start(self, checkout: Checkout) -> PaymentStart:
        order_no = checkout.order_no
        status, session = self._call("POST", "/v1/checkout/sessions", "checkout session", {
            "mode": "payment",
            "line_items[0][price_data][currency]": checkout.currency.lower(),
            "line_items[0][price_data][unit_amount]": checkout.amount_cents,  # the whole order, as one line
            "line_items[0][price_data][product_data][name]": checkout.title[:250] or order_no,
            "line_items[0][quantity]": 1,
            "success_url": checkout.return_url,
            "cancel_url": checkout.return_url,
            "client_reference_id": order_no,
            "metadata[order_no]": order_no,
            "payment_intent_data[metadata][order_no]": order_no,
            "adaptive_pricing[enabled]": "false",
        }, idempotency_key=f"checkout-{order_no}")
        if status != 200:
            raise ProviderError(f"stripe checkout session: {self._failure(status, session)}")
        if not isinstance(session.get("id"), str) or not isinstance(session.get("url"), str):
            raise ProviderError("stripe checkout session: answered without an id or url")
        return PaymentStart(pay_url=session["url"], ref=session["id"])

    # -- the webhook ---------------------------------------------------------------------

    def verify(self, request: NoticeRequest) -> Notice:
        self._check_signature(_header(request.headers, "Stripe-Signature"), request.body)
        try:
            event = json.loads(request.body)
        except ValueError:
            raise BadNotice({"_body": ["not JSON"]}) from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise BadNotice({"type": ["missing: not a Stripe event"]})
        kind = event["type"]
        if kind not in PAID_EVENTS and kind not in UNPAID_EVENTS:
            raise IgnoredNotice(f"{kind[:100]} is not an event this shop acts on")
        data = event.get("data")
        session = data.get("object") if isinstance(data, dict) else None
        if not isinstance(session, dict) or session.get("object") != "checkout.session":
            raise BadNotice({"data.object": ["not a checkout session"]})
        if not _order_no_of(session):
            raise IgnoredNotice("a checkout session this shop did not create")
        if kind in UNPAID_EVENTS:
            status = UNPAID_EVENTS[kind]
        else:
            status = "paid" if session.get("payment_status") == "paid" else str(session.get("payment_status"))
        return _notice(session, status)

    def _check_signature(self, header: str, body: bytes):
        timestamp, given = "", []
        for part in header.split(","):
            key, _, value = part.strip().partition("=")
            if key == "t":
                timestamp = value
            elif key == "v1":
                given.append(value)
        if not timestamp.isdigit() or not given:
            raise SignatureError("missing or malformed Stripe-Signature")
        expected = signature(self._webhook_secret, timestamp, body)
        if not any(hmac.compare_digest(expected, g.lower()) for g in given):
            raise SignatureError("no v1 signature matches")
        if abs(self._clock() - int(timestamp)) > self._tolerance_s:
            raise SignatureError("signed too long ago (or in the future): a replay?")

    def answer(self, outcome, error) -> Answer:
        if error is None:
            return Answer(json.dumps({"received": True, "outcome": outcome}), 200, "application/json")
        # Stripe resends anything not 2xx for three days: a refusal stays visible on its dashboard.
        return Answer(json.dumps(error.body()), 400, "application/json")

    # -- asking Stripe -------------------------------------------------------------------

    def query(self, order_no: str, ref: str | None) -> Notice | None:
        if not ref:
            return None  # the session was never created
        status, session = self._call("GET", f"/v1/checkout/sessions/{quote(ref, safe='')}", "session query")
        if status == 404:
            return None
        if status != 200:
            raise ProviderError(f"stripe session query: {self._failure(status, session)}")
        if session.get("payment_status") != "paid":
            return None
        if _order_no_of(session) != order_no:
            raise ProviderError("stripe session query answered about another order")
        try:
            return _notice(session, "paid")
        except BadNotice:
            raise ProviderError("stripe session query answered without an amount or payment") from None

    def refund(self, request: RefundRequest) -> RefundResult:
        status, refund = self._call("POST", "/v1/refunds", "refund", {
            "payment_intent": request.txn_id,
            "amount": request.amount_cents,
            "metadata[refund_no]": request.refund_no,
            "metadata[order_no]": request.order_no,
            "metadata[reason]": request.reason[:500],
        }, idempotency_key=request.refund_no)
        if status == 200:
            if refund.get("status") in ("succeeded", "pending", "requires_action"):
                return RefundResult(ok=True, provider_refund_id=str(refund.get("id") or "") or None)
            return RefundResult(ok=False, provider_refund_id=refund.get("id"),
                                error=_scrub(f"refund {refund.get('status')}: {refund.get('failure_reason')}"))
        error = refund.get("error") if isinstance(refund.get("error"), dict) else {}
        # A request Stripe read and refused (already refunded, more than was paid, no such
        # payment) is refused for good; a wrong key, a rate limit or a conflict is ours to retry.
        if 400 <= status < 500 and status not in (401, 403, 409, 429) \
                and error.get("type") in ("card_error", "invalid_request_error", "idempotency_error"):
            return RefundResult(ok=False, error=_scrub(error.get("message") or self._failure(status, refund)))
        raise ProviderError(f"stripe refund: {self._failure(status, refund)}")

    def _call(self, method: str, path: str, what: str, form: dict | None = None,
              idempotency_key: str | None = None) -> tuple[int, dict]:
        """(HTTP status, JSON body) of a Stripe API call; ``ProviderError`` when Stripe could
        not be reached or answered a 5xx or something not JSON."""
        headers = {"Authorization": f"Bearer {self._secret_key}", "Stripe-Version": API_VERSION}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            response = self._http.request(method, self.api_base + path, data=form, headers=headers, timeout=TIMEOUT)
        except Exception as exc:  # never the message: a session's adapters may quote the request
            raise ProviderError(f"stripe {what}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise ProviderError(f"stripe {what}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderError(f"stripe {what}: HTTP {response.status_code}, not a JSON object")
        return response.status_code, body

    @staticmethod
    def _failure(status: int, body: dict) -> str:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        kinds = "/".join(str(error[k]) for k in ("type", "code") if error.get(k))
        return _scrub(f"HTTP {status} {kinds}".strip())


def _order_no_of(session: dict) -> str | None:
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    order_no = metadata.get("order_no") or session.get("client_reference_id")
    return order_no if isinstance(order_no, str) and order_no else None


def _notice(session: dict, status: str) -> Notice:
    """A Checkout Session as a ``Notice``: amount and currency as the order was priced (with
    Adaptive Pricing, which we turn off but an old session may have had, the session's own are
    the buyer's converted ones: the conversion keeps the original), the PaymentIntent as the
    transaction (refunds are made on it)."""
    order_no = _order_no_of(session)
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    if metadata.get("order_no") and session.get("client_reference_id") not in (None, metadata["order_no"]):
        raise BadNotice({"client_reference_id": ["does not match metadata.order_no"]})
    priced = session
    if isinstance(session.get("currency_conversion"), dict) and session["currency_conversion"].get("source_currency"):
        priced = {"amount_total": session["currency_conversion"].get("amount_total"),
                  "currency": session["currency_conversion"]["source_currency"]}
    amount, currency = priced.get("amount_total"), priced.get("currency")
    if type(amount) is not int or amount < 0 or not isinstance(currency, str) or len(currency) != 3:
        raise BadNotice({"amount_total": ["missing or not an amount in minor units"]})
    intent = session.get("payment_intent")
    if isinstance(intent, dict):  # expanded
        intent = intent.get("id")
    if status == "paid" and not (isinstance(intent, str) and intent):
        raise BadNotice({"payment_intent": ["missing from a paid session"]})
    txn_id = intent if isinstance(intent, str) and intent else str(session.get("id") or "")
    if len(order_no) > 32 or not txn_id or len(txn_id) > 128:
        raise BadNotice({"client_reference_id": ["too long, or no transaction id"]})
    customer = session.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return Notice(order_no=order_no, amount_cents=amount, currency=currency.upper(), txn_id=txn_id, status=status,
                  payer_account=customer if isinstance(customer, str) and 0 < len(customer) <= 128 else None)


def from_env(settings, env, http) -> StripeProvider | None:
    values = settings_of(env, "LINKSHOP_STRIPE_", ("SECRET_KEY", "WEBHOOK_SECRET"))
    if values is None:
        return None
    # Never the values in these messages: a misplaced secret must not reach a log.
    if not values["SECRET_KEY"].startswith(("sk_", "rk_")):
        raise ConfigError("LINKSHOP_STRIPE_SECRET_KEY must be a secret (sk_...) or restricted (rk_...) key")
    if not values["WEBHOOK_SECRET"].startswith("whsec_"):
        raise ConfigError("LINKSHOP_STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_...)")
    api_base = (env.get("LINKSHOP_STRIPE_API_BASE") or "").strip() or API_BASE
    return StripeProvider(values["SECRET_KEY"], values["WEBHOOK_SECRET"], http, api_base)
