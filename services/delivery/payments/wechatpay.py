"""WeChat Pay (微信支付) API v3, Native payment: the buyer scans a QR code with WeChat.

Our calls: JSON to ``<gateway>/v3/...``, each signed with the merchant's private key in
``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",
timestamp="..",serial_no=".."``, the signature being base64 RSA-SHA256 (PKCS#1 v1.5) over
``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``. WeChat Pay signs its answers and its
notices with its own key (the "platform" key: a WeChat Pay public key, or the older platform
certificate): headers ``Wechatpay-Timestamp``, ``-Nonce``, ``-Signature``, ``-Serial`` over
``TIMESTAMP\\nNONCE\\nBODY\\n``. We refuse a serial that is not the configured key's and a
timestamp more than 5 minutes off (a captured notice played again later).

- start: ``POST /v3/pay/transactions/native`` → ``code_url`` (``weixin://...``, valid 2 hours),
  the QR code's content. There is no page to send the buyer to.
- notice: ``POST`` JSON ``{event_type: TRANSACTION.SUCCESS, resource: {algorithm:
  AEAD_AES_256_GCM, ciphertext, nonce, associated_data}}``; the resource, decrypted with the
  APIv3 key, is the transaction (``out_trade_no``, ``transaction_id``, ``trade_state``,
  ``amount.total`` in fen). Answered 204 when taken, else 4xx with ``{"code": "FAIL",
  "message"}``: WeChat Pay resends for a day on anything but 2xx.
- query: ``GET /v3/pay/transactions/out-trade-no/{order_no}?mchid=``.
- refund: ``POST /v3/refund/domestic/refunds`` with our refund number as ``out_refund_no``,
  which WeChat Pay keeps unique: a retry after a lost answer refunds once.

Error answers (4xx, 5xx) are read without checking their signature, as the official SDKs do:
WeChat Pay does not sign its answer to a call it could not authenticate, and the worst a forged
one can do is fail a refund (visible, retryable) or say an order is not paid yet.

Settings (all or none): ``LINKSHOP_WECHATPAY_GATEWAY`` (https://api.mch.weixin.qq.com),
``_APPID``, ``_MCHID``, ``_SERIAL_NO`` (the merchant API certificate's serial number),
``_PRIVATE_KEY`` (the merchant's private key, PEM or a path to it), ``_PLATFORM_PUBLIC_KEY``
(the WeChat Pay public key or platform certificate, PEM or path), ``_PLATFORM_SERIAL`` (its id,
``PUB_KEY_ID_...``, or the certificate's serial), ``_APIV3_KEY`` (the 32-byte APIv3 key).
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.config import ConfigError

from . import (TIMEOUT, Answer, BadNotice, Checkout, IgnoredNotice, Notice, NoticeRequest, PaymentStart, Provider,
               ProviderError, RefundRequest, RefundResult, SignatureError, pem_setting, settings_of)

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
CLOCK_SKEW_S = 300  # WeChat Pay's own SDKs refuse a signature older (or newer) than this
PAID = "SUCCESS"
REFUND_ACCEPTED = ("SUCCESS", "PROCESSING")  # PROCESSING: accepted, the money is on its way
SETTINGS = ("GATEWAY", "APPID", "MCHID", "SERIAL_NO", "PRIVATE_KEY", "PLATFORM_PUBLIC_KEY", "PLATFORM_SERIAL",
            "APIV3_KEY")


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What WeChat Pay signs in an answer or a notice."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def request_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What we sign in a call: ``path`` with its query string, as sent."""
    return f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def verify_signature(public_key, serial: str, headers, body: bytes, now: float) -> None:
    """``SignatureError`` unless ``headers`` carry WeChat Pay's signature of ``body`` by the key
    ``serial`` names, made within ``CLOCK_SKEW_S`` of ``now``."""
    timestamp, nonce, signature, given_serial = (str(headers.get(h) or "").strip() for h in (
        "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"))
    if not (timestamp and nonce and signature and given_serial):
        raise SignatureError("missing Wechatpay-* signature headers")
    if given_serial.upper() != serial.upper():
        raise SignatureError("signed with a key that is not the configured platform key")
    if not (timestamp.isascii() and timestamp.isdigit()) or abs(now - int(timestamp)) > CLOCK_SKEW_S:
        raise SignatureError("signature timestamp too far from now")
    try:
        public_key.verify(base64.b64decode(signature, validate=True), signed_message(timestamp, nonce, body),
                          padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError("bad signature") from None


def decrypt_resource(apiv3_key: bytes, resource) -> bytes:
    """A notice's ``resource``, decrypted; ``SignatureError`` when it does not decrypt with our
    key (AES-GCM authenticates it: only WeChat Pay and we hold the key)."""
    if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise BadNotice({"resource": ["not an AEAD_AES_256_GCM resource"]})
    fields = {f: resource.get(f) for f in ("ciphertext", "nonce", "associated_data")}
    if not all(isinstance(v, str) for v in fields.values()) or not fields["ciphertext"] or not fields["nonce"]:
        raise BadNotice({"resource": ["ciphertext, nonce and associated_data are required"]})
    try:
        ciphertext = base64.b64decode(fields["ciphertext"], validate=True)
        return AESGCM(apiv3_key).decrypt(fields["nonce"].encode(), ciphertext, fields["associated_data"].encode())
    except (InvalidTag, binascii.Error, ValueError):
        raise SignatureError("the resource does not decrypt with the APIv3 key") from None


def _utf8_prefix(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, never cutting a character in half."""
    return text.encode()[:limit].decode("utf-8", "ignore")


class WechatpayProvider(Provider):
    name = "wechatpay"
    pay_types = ("native",)
    currencies = frozenset({"CNY"})

    def __init__(self, gateway: str, appid: str, mchid: str, serial_no: str, private_key, platform_key,
                 platform_serial: str, apiv3_key: bytes, http, clock=time.time):
        self.gateway, self.appid, self.mchid, self.serial_no = gateway.rstrip("/"), appid, mchid, serial_no
        self._path_prefix = urlsplit(self.gateway).path  # signed as part of the path the gateway sees
        self._private_key, self._platform_key, self._platform_serial = private_key, platform_key, platform_serial
        self._apiv3_key, self._http, self._clock = apiv3_key, http, clock

    # -- calls to the gateway --------------------------------------------------------------

    def _authorization(self, method: str, path: str, body: bytes) -> str:
        timestamp, nonce = str(int(self._clock())), secrets.token_hex(16)
        signature = self._private_key.sign(request_message(method, path, timestamp, nonce, body),
                                           padding.PKCS1v15(), hashes.SHA256())
        return (f'{SCHEMA} mchid="{self.mchid}",nonce_str="{nonce}",signature="{base64.b64encode(signature).decode()}",'
                f'timestamp="{timestamp}",serial_no="{self.serial_no}"')

    def _call(self, what: str, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """The gateway's status and JSON answer; ``ProviderError`` when it could not be asked
        or a 2xx answer is not signed by WeChat Pay."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Authorization": self._authorization(method, self._path_prefix + path, body),
                   "Accept": "application/json", "User-Agent": "linkshop-delivery"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(method, self.gateway + path, data=body or None, headers=headers,
                                          timeout=TIMEOUT)
        except Exception as exc:  # network: worth another try later
            raise ProviderError(f"wechatpay {what}: {type(exc).__name__}") from None
        ok = 200 <= response.status_code < 300
        if ok:
            try:
                verify_signature(self._platform_key, self._platform_serial, response.headers, response.content,
                                 self._clock())
            except SignatureError as exc:
                raise ProviderError(f"wechatpay {what}: the answer is not WeChat Pay's ({exc})") from None
        try:
            data = json.loads(response.content) if response.content else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if ok:
                raise ProviderError(f"wechatpay {what}: the answer is not a JSON object")
            data = {}
        return response.status_code, data

    @staticmethod
    def _error(what: str, status: int, data: dict) -> str:
        return f"wechatpay {what}: HTTP {status} {str(data.get('code') or '')} {str(data.get('message') or '')}" \
            .strip()[:300]

    # -- the provider ------------------------------------------------------------------------

    def start(self, checkout: Checkout) -> PaymentStart:
        status, data = self._call("native prepay", "POST", "/v3/pay/transactions/native", {
            "appid": self.appid, "mchid": self.mchid,
            "description": _utf8_prefix(checkout.title, 127) or checkout.order_no,
            "out_trade_no": checkout.order_no, "notify_url": checkout.notify_url,
            "amount": {"total": checkout.amount_cents, "currency": checkout.currency}})
        code_url = data.get("code_url")
        if status != 200 or not isinstance(code_url, str) or not code_url:
            raise ProviderError(self._error("native prepay", status, data))
        return PaymentStart(qr_code=code_url)

    def verify(self, request: NoticeRequest) -> Notice:
        verify_signature(self._platform_key, self._platform_serial, request.headers, request.body, self._clock())
        try:
            envelope = json.loads(request.body)
        except ValueError:
            raise BadNotice({"_body": ["not JSON"]}) from None
        if not isinstance(envelope, dict):
            raise BadNotice({"_body": ["not an object"]})
        # Only payment notices pay an order. Another genuine event (a refund's, when the merchant
        # platform points its refund callback here) is acknowledged, or WeChat Pay resends it
        # for a day.
        if not str(envelope.get("event_type") or "").startswith("TRANSACTION."):
            raise IgnoredNotice(f"{str(envelope.get('event_type'))[:60]} is not a payment notice")
        try:
            transaction = json.loads(decrypt_resource(self._apiv3_key, envelope.get("resource")))
        except ValueError:  # UnicodeDecodeError too
            raise BadNotice({"resource": ["not JSON"]}) from None
        return self._notice(transaction)

    def _notice(self, transaction) -> Notice:
        """A transaction (a notice's resource, or a query's answer) as a ``Notice``;
        ``BadNotice`` when it is not one of this merchant's."""
        if not isinstance(transaction, dict):
            raise BadNotice({"resource": ["not an object"]})
        texts = {f: transaction.get(f) for f in ("mchid", "appid", "out_trade_no", "transaction_id", "trade_state")}
        missing = {f: ["missing"] for f, v in texts.items() if not isinstance(v, str) or not v}
        amount = transaction.get("amount")
        if not isinstance(amount, dict) or type(amount.get("total")) is not int or amount["total"] < 0 \
                or not isinstance(amount.get("currency"), str):
            missing["amount"] = ["total (in fen) and currency are required"]
        if missing:
            raise BadNotice(missing)
        if texts["mchid"] != self.mchid or texts["appid"] != self.appid:
            raise BadNotice({"mchid": ["not this shop's merchant id or app id"]})
        if len(texts["out_trade_no"]) > 32 or len(texts["transaction_id"]) > 64:
            raise BadNotice({"out_trade_no": ["too long"]})
        payer = transaction.get("payer")
        openid = payer.get("openid") if isinstance(payer, dict) else None
        return Notice(order_no=texts["out_trade_no"], amount_cents=amount["total"], currency=amount["currency"],
                      txn_id=texts["transaction_id"],
                      status="paid" if texts["trade_state"] == PAID else texts["trade_state"].lower()[:32],
                      payer_account=openid if isinstance(openid, str) and 0 < len(openid) <= 128 else None)

    def answer(self, outcome, error) -> Answer:
        # WeChat Pay notifies only payments: a signed notice of anything else is refused, as
        # a forged one would be.
        if error is None and outcome != "not_paid":
            return Answer("", 204)
        status, message = (400, "not a payment") if error is None else (error.status, error.message)
        return Answer(json.dumps({"code": "FAIL", "message": message[:200]}, ensure_ascii=False),
                      status if status >= 400 else 400, "application/json")

    def query(self, order_no: str, ref: str | None) -> Notice | None:
        status, data = self._call("query", "GET", f"/v3/pay/transactions/out-trade-no/{quote(order_no, safe='')}"
                                                  f"?mchid={quote(self.mchid, safe='')}")
        if status == 404 and data.get("code") in ("ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS"):
            return None  # never ordered at the gateway (start failed), so never paid
        if status != 200:
            raise ProviderError(self._error("query", status, data))
        if data.get("trade_state") != PAID:
            return None  # NOTPAY, CLOSED, USERPAYING...: not paid (yet)
        try:
            notice = self._notice(data)
        except BadNotice as exc:
            raise ProviderError(f"wechatpay query: an unreadable transaction ({', '.join(exc.fields)})") from None
        if notice.order_no != order_no:
            raise ProviderError("wechatpay query answered about another order")
        return notice

    def refund(self, request: RefundRequest) -> RefundResult:
        payload = {"out_trade_no": request.order_no, "out_refund_no": request.refund_no,
                   "amount": {"refund": request.amount_cents, "total": request.order_amount_cents,
                              "currency": request.currency}}
        if request.reason:
            payload["reason"] = _utf8_prefix(request.reason, 80)
        status, data = self._call("refund", "POST", "/v3/refund/domestic/refunds", payload)
        if status == 401 or status == 429 or status >= 500:
            # Our signature refused (a configuration to mend), rate limited, or WeChat Pay's
            # trouble: nothing was decided about the refund, so ask again later.
            raise ProviderError(self._error("refund", status, data))
        if status >= 300:
            return RefundResult(ok=False, error=f"{data.get('code') or status}: {data.get('message') or ''}"[:300])
        if data.get("out_refund_no") != request.refund_no or not isinstance(data.get("refund_id"), str):
            raise ProviderError("wechatpay refund answered about another refund")
        if data.get("status") in REFUND_ACCEPTED:
            return RefundResult(ok=True, provider_refund_id=data["refund_id"])
        # CLOSED, or ABNORMAL (the buyer's card refused it): settled by hand in the merchant platform.
        return RefundResult(ok=False, provider_refund_id=data["refund_id"],
                            error=f"refund {str(data.get('status'))[:20]} at WeChat Pay")


# -- settings -------------------------------------------------------------------------------

def _private_key(pem: str):
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("LINKSHOP_WECHATPAY_PRIVATE_KEY is not an unencrypted RSA private key in PEM")
    return key


def _platform_key(pem: str):
    try:
        if "CERTIFICATE" in pem:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        else:
            key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("LINKSHOP_WECHATPAY_PLATFORM_PUBLIC_KEY is not an RSA public key or certificate in PEM")
    return key


def from_env(settings, env, http) -> WechatpayProvider | None:
    values = settings_of(env, "LINKSHOP_WECHATPAY_", SETTINGS)
    if values is None:
        return None
    apiv3_key = values["APIV3_KEY"].encode()
    if len(apiv3_key) != 32:
        raise ConfigError("LINKSHOP_WECHATPAY_APIV3_KEY must be the 32-byte APIv3 key set in the merchant platform")
    return WechatpayProvider(values["GATEWAY"], values["APPID"], values["MCHID"], values["SERIAL_NO"],
                             _private_key(pem_setting(values["PRIVATE_KEY"])),
                             _platform_key(pem_setting(values["PLATFORM_PUBLIC_KEY"])),
                             values["PLATFORM_SERIAL"], apiv3_key, http)
