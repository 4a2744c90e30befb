"""Payment providers. Each order is bound to the provider it was created for; a real
provider plugs in beside the sandbox with its own signature scheme and notice format."""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from marshmallow import ValidationError

from .schemas import SandboxNoticeSchema


class SignatureError(Exception):
    pass


class BadNotice(Exception):
    def __init__(self, fields):
        super().__init__("bad notice")
        self.fields = fields


@dataclass(frozen=True)
class Notice:
    order_no: str
    amount_cents: int
    currency: str
    txn_id: str
    status: str
    payer_account: str | None = None  # the provider's id of the paying account, when it gives one


_NOTICE = SandboxNoticeSchema()  # built once; loading keeps no state on it


class SandboxProvider:
    """``X-Sandbox-Signature``: hex HMAC-SHA256 of the raw body with LINKSHOP_SANDBOX_SECRET."""

    name = "sandbox"
    header = "X-Sandbox-Signature"

    def __init__(self, secret: str):
        self._secret = secret.encode()

    def sign(self, raw_body: bytes) -> str:
        return hmac.new(self._secret, raw_body, hashlib.sha256).hexdigest()

    def verify(self, raw_body: bytes, headers) -> Notice:
        given = headers.get(self.header, "")
        if not given or not hmac.compare_digest(given.strip().lower(), self.sign(raw_body)):
            raise SignatureError("bad or missing signature")
        try:
            data = json.loads(raw_body)
        except ValueError:
            raise BadNotice({"_body": ["not JSON"]}) from None
        if not isinstance(data, dict):
            raise BadNotice({"_body": ["not an object"]})
        try:
            return Notice(**_NOTICE.load(data))
        except ValidationError as exc:
            raise BadNotice(exc.messages) from None

    def notice_body(self, order_no: str, amount_cents: int, currency: str, txn_id: str) -> bytes:
        return json.dumps({"order_no": order_no, "amount_cents": amount_cents, "currency": currency,
                           "txn_id": txn_id, "status": "paid"}).encode()


def providers_for(settings) -> dict:
    found = {}
    if settings.sandbox_secret:
        found["sandbox"] = SandboxProvider(settings.sandbox_secret)
    return found
