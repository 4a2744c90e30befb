"""The shared part of a fake Alipay open-platform gateway: one URL (``/gateway.do``) taking
every API method as a signed form (or the buyer's GET for page payments), answers signed
with the fake's own "Alipay" key. Subclasses register a handler per method
(``self.methods["alipay.trade.query"] = fn(biz, params) -> dict``). Written from Alipay's
documentation, independently of ``shared.alipay``: the test generates both key pairs."""
from __future__ import annotations

import base64
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Flask, Response, request

from ..gateways import FakeGateway

APP_ID = "2021000000000001"


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem_body(key) -> str:
    """A public key as Alipay's console shows it: base64 without PEM armour."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def signing_text(params: dict, skip=("sign",)) -> bytes:
    pairs = sorted((k, v) for k, v in params.items() if k not in skip and v not in ("", None))
    return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8")


def sign(key, text: bytes) -> str:
    return base64.b64encode(key.sign(text, padding.PKCS1v15(), hashes.SHA256())).decode()


def verifies(public_key, text: bytes, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature), text, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


class FakeAlipayGateway(FakeGateway):
    """``app_key``: the shop's (merchant app's) key pair, whose public half the gateway
    checks requests with; ``alipay_key``: the gateway's own, which signs answers and notices."""

    def __init__(self, app_id: str = APP_ID):
        self.app_id = app_id
        self.app_key, self.alipay_key = new_key(), new_key()
        self.methods = {}
        self.requests: list[dict] = []  # every verified API call: (method, biz)
        app = Flask("fake-alipay")
        app.add_url_rule("/gateway.do", view_func=self._gateway, methods=["GET", "POST"])
        super().__init__(app)

    def env(self) -> dict:
        """The shop's settings for this gateway, as an operator would write them."""
        return {"LINKSHOP_ALIPAY_GATEWAY": self.url + "/gateway.do", "LINKSHOP_ALIPAY_APP_ID": self.app_id,
                "LINKSHOP_ALIPAY_PRIVATE_KEY": private_pem(self.app_key),
                "LINKSHOP_ALIPAY_PUBLIC_KEY": public_pem_body(self.alipay_key)}

    def _gateway(self):
        params = request.values.to_dict()
        method = params.get("method", "")
        if params.get("app_id") != self.app_id or params.get("sign_type") != "RSA2" \
                or not verifies(self.app_key.public_key(), signing_text(params), params.get("sign", "")):
            return self.answer(method, {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"})
        biz = json.loads(params.get("biz_content") or "{}")
        self.requests.append({"method": method, "biz": biz, "params": params})
        handler = self.methods.get(method)
        if handler is None:
            return self.answer(method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.METHOD_UNKNOWN"})
        result = handler(biz, params)
        return result if isinstance(result, Response) else self.answer(method, result)

    def answer(self, method: str, body: dict, signed: bool = True) -> Response:
        """``{"<method>_response": {...}, "sign": ...}`` signed over the object's exact text."""
        key = method.replace(".", "_") + "_response"
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        signature = sign(self.alipay_key, text.encode()) if signed else ""
        raw = '{"%s":%s,"sign":"%s"}' % (key, text, signature)
        return Response(raw, content_type="application/json; charset=utf-8")

    def signed_notice(self, params: dict, key=None) -> dict:
        """An async notice's form: signed over all but ``sign`` and ``sign_type``."""
        params = dict(params, sign_type="RSA2")
        params["sign"] = sign(key or self.alipay_key, signing_text(params, skip=("sign", "sign_type")))
        return params
