"""A fake 易支付 (epay) gateway: ``submit.php`` takes the buyer, ``pay`` sends the notice
(GET, as most epay gateways do, or form POST) until it reads ``success``, ``api.php``
answers ``act=order`` and ``act=refund``. Signed as the protocol says: lower-case MD5 of the
non-empty parameters but ``sign``/``sign_type``, sorted, ``k=v&...``, key appended."""
from __future__ import annotations

import hashlib
import secrets
from urllib.parse import parse_qsl, urlsplit

import requests
from flask import Flask, jsonify, request

from ..gateways import FakeGateway

PID, KEY = "1001", "epay-test-key-" + secrets.token_hex(8)


def epay_sign(params: dict, key: str = KEY) -> str:
    pairs = [f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type") and params[k] != ""]
    return hashlib.md5(("&".join(pairs) + key).encode("utf-8")).hexdigest()


class FakeEpay(FakeGateway):
    def __init__(self, pid: str = PID, key: str = KEY):
        self.pid, self.key = pid, key
        app = Flask("fake-epay")
        app.add_url_rule("/submit.php", view_func=self._submit, methods=["GET", "POST"])
        app.add_url_rule("/api.php", view_func=self._api, methods=["GET", "POST"])
        super().__init__(app)

    def env(self) -> dict:
        return {"LINKSHOP_EPAY_GATEWAY": self.url, "LINKSHOP_EPAY_PID": self.pid, "LINKSHOP_EPAY_KEY": self.key}

    # -- the buyer at the gateway --------------------------------------------------------

    def _submit(self):
        params = request.values.to_dict()
        if params.get("sign") != epay_sign(params, self.key) or params.get("pid") != self.pid:
            return "签名错误 (bad sign)", 400
        self.payments[params["out_trade_no"]] = {**params, "paid": False, "trade_no": None}
        return f"<html><body>pay {params['money']} for {params['name']}</body></html>"

    def open(self, pay_url: str) -> requests.Response:
        """The buyer's browser follows the pay link."""
        return requests.get(pay_url, timeout=5)

    def pay(self, order_no: str, method: str = "GET", **override) -> list[tuple[int, str]]:
        """The buyer pays: the gateway notifies the shop (unless it loses the notice)."""
        payment = self.payments[order_no]
        payment["paid"] = True
        payment["trade_no"] = payment["trade_no"] or "2026" + secrets.token_hex(8)
        if self.lose_notices:
            return []
        return self.notify(payment["notify_url"], self.notice(order_no, **override), method)

    def notice(self, order_no: str, sign_with: str | None = None, **override) -> dict:
        payment = self.payments[order_no]
        params = {"pid": self.pid, "trade_no": payment["trade_no"], "out_trade_no": order_no,
                  "type": payment["type"], "name": payment["name"], "money": payment["money"],
                  "trade_status": "TRADE_SUCCESS"} | override
        params["sign"] = epay_sign(params, sign_with or self.key)
        params["sign_type"] = "MD5"
        return params

    def notify(self, notify_url: str, params: dict, method: str = "GET") -> list[tuple[int, str]]:
        def send():
            if method == "GET":
                return requests.get(notify_url, params=params, timeout=5)
            return requests.post(notify_url, data=params, timeout=5)
        return self.deliver(send, lambda r: r.text == "success")

    # -- the merchant API ----------------------------------------------------------------

    def _api(self):
        params = request.values.to_dict()
        if params.get("pid") != self.pid or params.get("key") != self.key:
            return jsonify({"code": -1, "msg": "KEY校验失败"})
        if params.get("act") == "order":
            payment = self.payments.get(params.get("out_trade_no", ""))
            if payment is None:
                return jsonify({"code": -1, "msg": "订单号不存在"})
            return jsonify({"code": 1, "msg": "查询订单号成功！", "trade_no": payment["trade_no"],
                            "out_trade_no": params["out_trade_no"], "type": payment["type"], "pid": self.pid,
                            "name": payment["name"], "money": payment["money"], "status": 1 if payment["paid"] else 0})
        if params.get("act") == "refund":
            if self.fail_refunds:
                self.fail_refunds -= 1
                return "internal error", 500
            if self.refuse_refunds:
                return jsonify({"code": -1, "msg": "退款金额超过订单金额"})
            self.refunds.append(params)
            return jsonify({"code": 1, "msg": "退款成功"})
        return jsonify({"code": -1, "msg": "unknown act"})


def query_of(url: str) -> dict:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
