"""易支付 (epay), the protocol most key shops speak (the "彩虹易支付" family of gateways).

Signing: the lower-case MD5 of the non-empty parameters except ``sign`` and ``sign_type``,
sorted by name, joined ``k=v&k=v``, with the merchant key appended. The buyer is sent to
``<gateway>/submit.php``; the notice comes back to our notify URL as GET or form POST and is
acknowledged by the plain text ``success`` (the gateway resends until it reads it). Query
and refund go to ``<gateway>/api.php`` (``act=order``, ``act=refund``) with the key.

epay's refund call carries no refund number of ours, so a retry after a lost answer could
refund twice; we never retry a refund the gateway answered, and the gateway refuses to refund
more than was paid.

Settings: ``LINKSHOP_EPAY_GATEWAY`` (base URL), ``LINKSHOP_EPAY_PID``, ``LINKSHOP_EPAY_KEY``.
"""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from . import (TIMEOUT, Answer, BadNotice, Checkout, Notice, NoticeRequest, PaymentStart, Provider, ProviderError,
               RefundRequest, RefundResult, SignatureError, cents, settings_of, yuan)

PAID = "TRADE_SUCCESS"


def sign(params: dict, key: str) -> str:
    signed = sorted((k, str(v)) for k, v in params.items() if k not in ("sign", "sign_type") and v not in (None, ""))
    return hashlib.md5(("&".join(f"{k}={v}" for k, v in signed) + key).encode()).hexdigest()


class EpayProvider(Provider):
    name = "epay"
    pay_types = ("alipay", "wxpay")
    currencies = frozenset({"CNY"})
    notice_methods = ("GET", "POST")

    def __init__(self, gateway: str, pid: str, key: str, http):
        self.gateway, self.pid, self._key, self._http = gateway.rstrip("/"), pid, key, http

    def start(self, checkout: Checkout) -> PaymentStart:
        params = {"pid": self.pid, "type": checkout.pay_type, "out_trade_no": checkout.order_no,
                  "notify_url": checkout.notify_url, "return_url": checkout.return_url,
                  "name": checkout.title[:100] or checkout.order_no, "money": yuan(checkout.amount_cents)}
        params |= {"sign": sign(params, self._key), "sign_type": "MD5"}
        return PaymentStart(pay_url=f"{self.gateway}/submit.php?{urlencode(params)}")

    def verify(self, request: NoticeRequest) -> Notice:
        params = request.params
        given = str(params.get("sign") or "")
        if not given or not hmac.compare_digest(given.lower(), sign(params, self._key)):
            raise SignatureError("bad or missing signature")
        missing = [f for f in ("pid", "trade_no", "out_trade_no", "money", "trade_status") if not params.get(f)]
        if missing:
            raise BadNotice({f: ["missing"] for f in missing})
        if str(params["pid"]) != self.pid:
            raise BadNotice({"pid": ["not this shop's merchant id"]})
        return self._notice(params["out_trade_no"], params["trade_no"], params["money"],
                            "paid" if params["trade_status"] == PAID else str(params["trade_status"]).lower())

    @staticmethod
    def _notice(order_no, trade_no, money, status) -> Notice:
        if len(str(order_no)) > 32 or len(str(trade_no)) > 128:
            raise BadNotice({"out_trade_no": ["too long"]})
        return Notice(order_no=str(order_no), amount_cents=cents(money), currency="CNY", txn_id=str(trade_no),
                      status=status)

    def answer(self, outcome, error) -> Answer:
        # epay gateways notify only TRADE_SUCCESS: any other status is not theirs to send.
        if error is None and outcome != "not_paid":
            return Answer("success")
        return Answer("fail", 400)

    def _api(self, act: str, method: str, params: dict) -> dict:
        try:
            response = self._http.request(method, f"{self.gateway}/api.php", timeout=TIMEOUT,
                                          params={"act": act} if method == "POST" else {"act": act, **params},
                                          data=params if method == "POST" else None)
            response.raise_for_status()
            return response.json()
        except Exception as exc:  # network, HTTP status, or not JSON: all worth another try later
            raise ProviderError(f"epay {act}: {type(exc).__name__}") from None

    def query(self, order_no: str, ref: str | None) -> Notice | None:
        answer = self._api("order", "GET", {"pid": self.pid, "key": self._key, "out_trade_no": order_no})
        if str(answer.get("code")) != "1" or str(answer.get("status")) != "1":
            return None  # unknown to the gateway, or not paid yet
        if str(answer.get("out_trade_no")) != order_no:
            raise ProviderError("epay order query answered about another order")
        try:
            return self._notice(order_no, answer["trade_no"], answer["money"], "paid")
        except (KeyError, BadNotice):
            raise ProviderError("epay order query answered without a trade number or amount") from None

    def refund(self, request: RefundRequest) -> RefundResult:
        answer = self._api("refund", "POST", {"pid": self.pid, "key": self._key, "trade_no": request.txn_id,
                                              "out_trade_no": request.order_no, "money": yuan(request.amount_cents)})
        if str(answer.get("code")) == "1":
            return RefundResult(ok=True, provider_refund_id=request.txn_id)
        return RefundResult(ok=False, error=str(answer.get("msg") or "refused by the gateway")[:300])


def from_env(settings, env, http) -> EpayProvider | None:
    values = settings_of(env, "LINKSHOP_EPAY_", ("GATEWAY", "PID", "KEY"))
    if values is None:
        return None
    return EpayProvider(values["GATEWAY"], values["PID"], values["KEY"], http)
