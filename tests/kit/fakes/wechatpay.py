"""A fake WeChat Pay API v3 gateway, written from WeChat Pay's documentation (签名生成, 签名
验证, 回调报文解密; Native下单, 查询订单, 申请退款, 支付成功回调通知):

- every call must carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",
  signature="..",timestamp="..",serial_no=".."``: RSA-SHA256 (PKCS#1 v1.5) by the merchant's
  key over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``; anything else is answered
  401 ``SIGN_ERROR``, unsigned, as the real one does;
- every other answer is signed with the platform key: ``Wechatpay-Timestamp``, ``-Nonce``,
  ``-Signature``, ``-Serial`` over ``TIMESTAMP\\nNONCE\\nBODY\\n``;
- ``pay`` sends the notice — the transaction encrypted with the APIv3 key (AES-256-GCM, a
  12-byte nonce, associated data ``transaction``), the body signed as above — until it reads
  a 2xx;
- native prepay answers a ``code_url``; query and refund answer as documented.

Keys are generated here, once per test session; the merchant's private key and the platform's
public key are what the shop is configured with (``env``)."""
from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Flask, Response, request

from ..gateways import FakeGateway

MCHID, APPID = "1900000109", "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PLATFORM_SERIAL = "PUB_KEY_ID_0119000001092024111800000000000001"
MERCHANT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PLATFORM_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # someone else's
CST = timezone(timedelta(hours=8))


def private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa_sign(key, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def wechatpay_headers(body: bytes, key=PLATFORM_KEY, serial: str = PLATFORM_SERIAL,
                      timestamp: int | None = None) -> dict:
    """WeChat Pay's signature headers for an answer's or a notice's body."""
    stamp, nonce = str(int(time.time()) if timestamp is None else timestamp), secrets.token_urlsafe(24)
    return {"Wechatpay-Timestamp": stamp, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": serial,
            "Wechatpay-Signature": rsa_sign(key, f"{stamp}\n{nonce}\n".encode() + body + b"\n"),
            "Request-ID": uuid.uuid4().hex}


def authorization_params(header: str) -> dict | None:
    """``mchid="..",nonce_str="..",...`` after the schema, as a dict; None if not that schema."""
    schema, _, rest = header.partition(" ")
    if schema != "WECHATPAY2-SHA256-RSA2048":
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


def now_cst() -> str:
    return datetime.now(CST).replace(microsecond=0).isoformat()


class FakeWechatpay(FakeGateway):
    def __init__(self, mchid: str = MCHID, appid: str = APPID):
        self.mchid, self.appid = mchid, appid
        self.apiv3_key = secrets.token_urlsafe(24)[:32]  # 32 ASCII characters, as the merchant platform sets
        self.answer_key = PLATFORM_KEY  # a test swaps it to forge the gateway's answers
        self.signed: list[dict] = []    # the Authorization parameters of every call that verified
        app = Flask("fake-wechatpay")
        app.add_url_rule("/v3/pay/transactions/native", view_func=self._native, methods=["POST"])
        app.add_url_rule("/v3/pay/transactions/out-trade-no/<out_trade_no>", view_func=self._query)
        app.add_url_rule("/v3/refund/domestic/refunds", view_func=self._refund, methods=["POST"])
        super().__init__(app)

    def env(self) -> dict:
        return {"LINKSHOP_WECHATPAY_GATEWAY": self.url, "LINKSHOP_WECHATPAY_APPID": self.appid,
                "LINKSHOP_WECHATPAY_MCHID": self.mchid, "LINKSHOP_WECHATPAY_SERIAL_NO": MERCHANT_SERIAL,
                "LINKSHOP_WECHATPAY_PRIVATE_KEY": private_pem(MERCHANT_KEY),
                "LINKSHOP_WECHATPAY_PLATFORM_PUBLIC_KEY": public_pem(PLATFORM_KEY),
                "LINKSHOP_WECHATPAY_PLATFORM_SERIAL": PLATFORM_SERIAL, "LINKSHOP_WECHATPAY_APIV3_KEY": self.apiv3_key}

    # -- the merchant API ----------------------------------------------------------------

    def _answer(self, status: int, data: dict | None, signed: bool = True) -> Response:
        body = b"" if data is None else json.dumps(data, ensure_ascii=False).encode()
        headers = wechatpay_headers(body, self.answer_key) if signed else {"Request-ID": uuid.uuid4().hex}
        return Response(body, status, headers, content_type="application/json" if body else None)

    def _error(self, status: int, code: str, message: str, signed: bool = True) -> Response:
        return self._answer(status, {"code": code, "message": message}, signed)

    def _authenticated(self) -> bool:
        """The call is signed by this merchant's key, over what it sent, lately."""
        params = authorization_params(request.headers.get("Authorization", ""))
        if not params or params.get("mchid") != self.mchid or params.get("serial_no") != MERCHANT_SERIAL:
            return False
        if not params.get("timestamp", "").isdigit() or abs(time.time() - int(params["timestamp"])) > 300:
            return False
        path = request.environ.get("RAW_URI") or request.full_path.rstrip("?")
        message = f"{request.method}\n{path}\n{params['timestamp']}\n{params.get('nonce_str', '')}\n".encode() \
            + request.get_data() + b"\n"
        try:
            MERCHANT_KEY.public_key().verify(base64.b64decode(params.get("signature", "")), message,
                                             padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        self.signed.append(params)
        return True

    def _native(self):
        if not self._authenticated():
            return self._error(401, "SIGN_ERROR", "签名错误", signed=False)
        body = request.get_json(silent=True) or {}
        amount = body.get("amount") or {}
        if body.get("appid") != self.appid or body.get("mchid") != self.mchid:
            return self._error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        if not 6 <= len(body.get("out_trade_no") or "") <= 32 or not body.get("notify_url") \
                or not 1 <= len((body.get("description") or "").encode()) <= 127 \
                or type(amount.get("total")) is not int or amount["total"] < 1 or amount.get("currency") != "CNY":
            return self._error(400, "PARAM_ERROR", "参数错误")
        payment = self.payments.get(body["out_trade_no"])
        if payment is None:
            payment = self.payments[body["out_trade_no"]] = {
                **body, "code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(6)}", "paid": False,
                "transaction_id": None, "openid": "o" + secrets.token_urlsafe(20)}
        return self._answer(200, {"code_url": payment["code_url"]})

    def transaction(self, order_no: str, total: int | None = None, currency: str = "CNY", **fields) -> dict:
        """The transaction as the query answers it and a notice carries it (decrypted)."""
        payment = self.payments[order_no]
        total = payment["amount"]["total"] if total is None else total
        if not payment["paid"]:
            return {"appid": self.appid, "mchid": self.mchid, "out_trade_no": order_no, "trade_state": "NOTPAY",
                    "trade_state_desc": "订单未支付", "amount": {"total": total, "currency": currency}} | fields
        return {"appid": self.appid, "mchid": self.mchid, "out_trade_no": order_no,
                "transaction_id": payment["transaction_id"], "trade_type": "NATIVE", "trade_state": "SUCCESS",
                "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "", "success_time": now_cst(),
                "payer": {"openid": payment["openid"]},
                "amount": {"total": total, "payer_total": total, "currency": currency, "payer_currency": currency},
                } | fields

    def _query(self, out_trade_no):
        if not self._authenticated():
            return self._error(401, "SIGN_ERROR", "签名错误", signed=False)
        if request.args.get("mchid") != self.mchid:
            return self._error(400, "PARAM_ERROR", "mchid不匹配")
        if out_trade_no not in self.payments:
            return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
        return self._answer(200, self.transaction(out_trade_no))

    def _refund(self):
        if not self._authenticated():
            return self._error(401, "SIGN_ERROR", "签名错误", signed=False)
        if self.fail_refunds:
            self.fail_refunds -= 1
            return self._error(500, "SYSTEM_ERROR", "系统错误")
        body = request.get_json(silent=True) or {}
        amount = body.get("amount") or {}
        payment = self.payments.get(body.get("out_trade_no") or "")
        if payment is None or not payment["paid"]:
            return self._error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        if not body.get("out_refund_no") or amount.get("total") != payment["amount"]["total"] \
                or type(amount.get("refund")) is not int or amount["refund"] < 1 or amount.get("currency") != "CNY":
            return self._error(400, "PARAM_ERROR", "参数错误")
        if self.refuse_refunds:
            return self._error(403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起")
        made = next((r for r in self.refunds if r["out_refund_no"] == body["out_refund_no"]), None)
        if made is None:  # one refund per out_refund_no, however often it is asked for
            refunded = sum(r["amount"]["refund"] for r in self.refunds if r["out_trade_no"] == body["out_trade_no"])
            if refunded + amount["refund"] > amount["total"]:
                return self._error(403, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            made = {**body, "refund_id": "50" + secrets.token_hex(14)}
            self.refunds.append(made)
        return self._answer(200, {
            "refund_id": made["refund_id"], "out_refund_no": made["out_refund_no"],
            "transaction_id": payment["transaction_id"], "out_trade_no": made["out_trade_no"], "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱", "create_time": now_cst(), "status": "PROCESSING",
            "funds_account": "AVAILABLE",
            "amount": {"total": amount["total"], "refund": made["amount"]["refund"], "payer_total": amount["total"],
                       "payer_refund": made["amount"]["refund"], "currency": "CNY"}})

    # -- the buyer scans and pays ----------------------------------------------------------

    def pay(self, order_no: str, **override) -> list[tuple[int, str]]:
        """The buyer pays: the gateway notifies the shop (unless it loses the notice)."""
        payment = self.payments[order_no]
        payment["paid"] = True
        payment["transaction_id"] = payment["transaction_id"] or "4200" + "".join(
            secrets.choice("0123456789") for _ in range(24))
        if self.lose_notices:
            return []
        return self.notify(payment["notify_url"], self.notice(order_no, **override))

    def notice(self, order_no: str, apiv3_key: str | None = None, sign_with=None, serial: str = PLATFORM_SERIAL,
               timestamp: int | None = None, event_type: str = "TRANSACTION.SUCCESS", **fields) -> tuple[dict, bytes]:
        """A payment notice (headers, body): the transaction (with ``fields`` changed)
        encrypted with the APIv3 key, the body signed with the platform key."""
        nonce = secrets.token_urlsafe(9)[:12]
        plaintext = json.dumps(self.transaction(order_no, **fields), ensure_ascii=False).encode()
        ciphertext = AESGCM((apiv3_key or self.apiv3_key).encode()).encrypt(nonce.encode(), plaintext, b"transaction")
        body = json.dumps({
            "id": str(uuid.uuid4()), "create_time": now_cst(), "resource_type": "encrypt-resource",
            "event_type": event_type, "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": "transaction",
                         "nonce": nonce}}, ensure_ascii=False).encode()
        headers = wechatpay_headers(body, sign_with or PLATFORM_KEY, serial, timestamp)
        return headers | {"Content-Type": "application/json"}, body

    def notify(self, notify_url: str, notice: tuple[dict, bytes]) -> list[tuple[int, str]]:
        headers, body = notice
        return self.deliver(lambda: requests.post(notify_url, data=body, headers=headers, timeout=5),
                            lambda r: 200 <= r.status_code < 300)
