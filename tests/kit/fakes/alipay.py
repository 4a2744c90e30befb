"""A fake Alipay payment gateway on the shared fake open platform (``alipay_gateway``): the
buyer's cashier (``alipay.trade.wap.pay`` / ``page.pay``, a signed GET), the QR code
(``alipay.trade.precreate``), ``pay`` sending the signed async notice as a form POST until it
reads ``success``, ``alipay.trade.query``, and ``alipay.trade.refund`` idempotent on
``out_request_no``. Written from Alipay's documentation, signing with the fake's own code."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, urlsplit

import requests
from flask import Response

from .alipay_gateway import APP_ID, FakeAlipayGateway

BEIJING = timezone(timedelta(hours=8))
PRODUCT_CODES = {"alipay.trade.wap.pay": "QUICK_WAP_WAY", "alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY"}
NOT_EXIST = {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"}


def failed(sub_code: str, sub_msg: str) -> dict:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}


def amount(text) -> Decimal | None:
    """Alipay's amounts: yuan, two decimals at most, 0.01 to 100000000."""
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        return None
    ok = value.is_finite() and value == value.quantize(Decimal("0.01")) and Decimal("0.01") <= value <= 10**8
    return value if ok else None


def now() -> str:
    return datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


class FakeAlipay(FakeAlipayGateway):
    """``payments``: by ``out_trade_no``, what the shop asked for (``method``, ``biz``,
    ``notify_url``) and what happened (``paid``, ``trade_no``, ``status``). ``refunds``: every
    refund made (the biz content), once per ``out_request_no``."""

    def __init__(self, app_id: str = APP_ID):
        super().__init__(app_id)
        for method in PRODUCT_CODES:
            self.methods[method] = self._cashier
        self.methods["alipay.trade.precreate"] = self._precreate
        self.methods["alipay.trade.query"] = self._query
        self.methods["alipay.trade.refund"] = self._refund
        self._refunded: dict[str, dict] = {}  # out_request_no → the answer given

    # -- the buyer ---------------------------------------------------------------------------

    def _order_refusal(self, biz: dict) -> dict | None:
        if not biz.get("out_trade_no") or amount(biz.get("total_amount")) is None:
            return failed("ACQ.INVALID_PARAMETER", "参数无效")
        if not biz.get("subject") or len(biz["subject"]) > 256 or any(c in biz["subject"] for c in "/=&"):
            return failed("ACQ.INVALID_PARAMETER", "subject 不可使用特殊字符")
        return None

    def _record(self, method: str, biz: dict, params: dict):
        self.payments[biz["out_trade_no"]] = {"method": method, "biz": biz, "notify_url": params.get("notify_url"),
                                              "return_url": params.get("return_url"), "paid": False,
                                              "trade_no": None, "status": "WAIT_BUYER_PAY"}

    def _cashier(self, biz: dict, params: dict):
        method = params["method"]
        refusal = self._order_refusal(biz)
        if refusal is None and biz.get("product_code") != PRODUCT_CODES[method]:
            refusal = failed("ACQ.INVALID_PARAMETER", "product_code 与接口不符")
        if refusal is not None:  # the cashier shows the error to the buyer
            return Response(f"<html><body>错误 {refusal['sub_code']}</body></html>", 400, content_type="text/html")
        self._record(method, biz, params)
        return Response(f"<html><body>支付宝 {biz['total_amount']} 元: {biz['subject']}</body></html>",
                        content_type="text/html; charset=utf-8")

    def _precreate(self, biz: dict, params: dict) -> dict:
        refusal = self._order_refusal(biz)
        if refusal is not None:
            return refusal
        self._record(params["method"], biz, params)
        return {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                "qr_code": "https://qr.alipay.com/bax0" + secrets.token_hex(10)}

    def open(self, pay_url: str) -> requests.Response:
        """The buyer's browser follows the pay link to the cashier."""
        return requests.get(pay_url, timeout=5)

    def pay(self, order_no: str, **override) -> list[tuple[int, str]]:
        """The buyer pays: Alipay notifies the shop (unless it loses the notice)."""
        payment = self.payments[order_no]
        payment.update(paid=True, status="TRADE_SUCCESS")
        payment["trade_no"] = payment["trade_no"] or datetime.now(BEIJING).strftime("%Y%m%d") + "2200" + \
            "".join(secrets.choice("0123456789") for _ in range(16))
        payment["buyer_id"] = "2088" + "".join(secrets.choice("0123456789") for _ in range(12))
        if self.lose_notices:
            return []
        return self.notify(payment["notify_url"], self.notice(order_no, **override))

    def notice(self, order_no: str, sign_with=None, drop=(), **override) -> dict:
        """The async notice of the order's payment, signed (by ``sign_with``, default the
        gateway's key); ``override`` changes fields before signing, ``drop`` removes some."""
        payment = self.payments[order_no]
        params = {"notify_time": now(), "notify_type": "trade_status_sync", "notify_id": secrets.token_hex(17),
                  "app_id": self.app_id, "charset": "utf-8", "version": "1.0", "out_trade_no": order_no,
                  "trade_no": payment["trade_no"], "total_amount": payment["biz"]["total_amount"],
                  "receipt_amount": payment["biz"]["total_amount"], "buyer_id": payment.get("buyer_id"),
                  "subject": payment["biz"]["subject"], "gmt_payment": now(), "trade_status": payment["status"]}
        params = {k: v for k, v in (params | override).items() if k not in drop and v is not None}
        return self.signed_notice(params, key=sign_with)

    def notify(self, notify_url: str, params: dict) -> list[tuple[int, str]]:
        return self.deliver(lambda: requests.post(notify_url, data=params, timeout=5), lambda r: r.text == "success")

    # -- the merchant API --------------------------------------------------------------------

    def _query(self, biz: dict, params: dict) -> dict:
        payment = self.payments.get(biz.get("out_trade_no") or "")
        if payment is None or (payment["trade_no"] is None and payment["method"] == "alipay.trade.precreate"):
            return NOT_EXIST  # a QR code nobody scanned is no trade yet
        answer = {"code": "10000", "msg": "Success", "out_trade_no": biz["out_trade_no"],
                  "trade_no": payment["trade_no"] or "", "trade_status": payment["status"],
                  "total_amount": payment["biz"]["total_amount"]}
        if payment["paid"]:
            answer |= {"buyer_user_id": payment["buyer_id"], "buyer_logon_id": "bu***@example.com",
                       "receipt_amount": payment["biz"]["total_amount"], "send_pay_date": now()}
        return answer

    def _refund(self, biz: dict, params: dict) -> dict:
        if self.fail_refunds:
            self.fail_refunds -= 1
            return {"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error",
                    "sub_msg": "系统繁忙"}
        if self.refuse_refunds:
            return failed("ACQ.TRADE_NOT_ALLOW_REFUND", "当前交易不允许退款")
        request_no = biz.get("out_request_no") or biz.get("out_trade_no") or ""
        if request_no in self._refunded:  # the same refund asked again: its answer, no money moves
            return dict(self._refunded[request_no], fund_change="N")
        payment = self.payments.get(biz.get("out_trade_no") or "")
        if payment is None or (biz.get("trade_no") and biz["trade_no"] != payment["trade_no"]):
            return NOT_EXIST
        if not payment["paid"]:
            return failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        asked, paid = amount(biz.get("refund_amount")), Decimal(payment["biz"]["total_amount"])
        done = sum((Decimal(r["refund_amount"]) for r in self.refunds if r["out_trade_no"] == biz["out_trade_no"]),
                   Decimal(0))
        if asked is None:
            return failed("ACQ.INVALID_PARAMETER", "参数无效")
        if done + asked > paid:
            return failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        self.refunds.append(dict(biz))
        answer = {"code": "10000", "msg": "Success", "trade_no": payment["trade_no"],
                  "out_trade_no": biz["out_trade_no"], "buyer_logon_id": "bu***@example.com",
                  "fund_change": "Y", "refund_fee": f"{done + asked:.2f}"}
        self._refunded[request_no] = answer
        return answer


def query_of(url: str) -> dict:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def biz_of(url: str) -> dict:
    return json.loads(query_of(url)["biz_content"])
