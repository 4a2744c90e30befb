"""The sandbox: a provider with no gateway, for embedded mode and tests, never in production.
A person "pays" on its own page (``/delivery/v1/payments/sandbox/pay/<order>``), which makes
the same signed call a provider would; refunds succeed at once."""
from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import quote

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from . import Answer, BadNotice, Checkout, Notice, NoticeRequest, PaymentStart, Provider, RefundRequest, \
    RefundResult, SignatureError


class SandboxNoticeSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the signature covers the whole body anyway

    order_no = fields.Str(required=True, validate=validate.Length(min=1, max=32))
    amount_cents = fields.Int(required=True, strict=True)
    currency = fields.Str(required=True, validate=validate.Length(equal=3))
    txn_id = fields.Str(required=True, validate=validate.Length(min=1, max=128))
    status = fields.Str(required=True, validate=validate.Length(min=1, max=32))
    payer_account = fields.Str(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))


_NOTICE = SandboxNoticeSchema()  # built once; loading keeps no state on it


class SandboxProvider(Provider):
    """``X-Sandbox-Signature``: hex HMAC-SHA256 of the raw body with LINKSHOP_SANDBOX_SECRET."""

    name = "sandbox"
    header = "X-Sandbox-Signature"

    def __init__(self, secret: str, public_url: str):
        self._secret = secret.encode()
        self._public_url = public_url

    def start(self, checkout: Checkout) -> PaymentStart:
        return PaymentStart(pay_url=f"{self._public_url}/delivery/v1/payments/sandbox/pay/{checkout.order_no}"
                                    f"?token={quote(checkout.access_token)}")

    def sign(self, raw_body: bytes) -> str:
        return hmac.new(self._secret, raw_body, hashlib.sha256).hexdigest()

    def verify(self, request: NoticeRequest) -> Notice:
        given = request.headers.get(self.header, "")
        if not given or not hmac.compare_digest(given.strip().lower(), self.sign(request.body)):
            raise SignatureError("bad or missing signature")
        try:
            data = json.loads(request.body)
        except ValueError:
            raise BadNotice({"_body": ["not JSON"]}) from None
        if not isinstance(data, dict):
            raise BadNotice({"_body": ["not an object"]})
        try:
            return Notice(**_NOTICE.load(data))
        except ValidationError as exc:
            raise BadNotice(exc.messages) from None

    def answer(self, outcome, error) -> Answer:
        if error is not None:
            return Answer(json.dumps(error.body()), error.status, "application/json")
        return Answer(json.dumps({"ok": True, "outcome": outcome}), 200, "application/json")

    def refund(self, request: RefundRequest) -> RefundResult:
        return RefundResult(ok=True, provider_refund_id="sandbox-" + request.refund_no)

    def notice_body(self, order_no: str, amount_cents: int, currency: str, txn_id: str) -> bytes:
        return json.dumps({"order_no": order_no, "amount_cents": amount_cents, "currency": currency,
                           "txn_id": txn_id, "status": "paid"}).encode()


def from_env(settings, env, http) -> SandboxProvider | None:
    if not settings.sandbox_secret:
        return None
    return SandboxProvider(settings.sandbox_secret, settings.public_url)
