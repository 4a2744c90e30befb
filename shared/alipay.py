"""Alipay's open platform API (RSA2), as two services speak it: delivery takes payments
(page and QR payment, notices, query, refund) and payout sends withdrawals (transfers). It
lives in the kernel because no service imports another; it knows no service and holds only
the protocol: signing requests, verifying notices and answers.

- A request is the public parameters (``app_id, method, format, charset, sign_type,
  timestamp, version``, optionally ``notify_url``/``return_url``) and ``biz_content`` (JSON),
  signed with the app's private key: RSA-SHA256 (PKCS#1 v1.5), base64, over every non-empty
  parameter but ``sign``, sorted by name, joined ``k=v&k=v`` (raw values, not URL-encoded).
- An answer is ``{"<method with _>_response": {...}, "sign": "..."}``, signed by Alipay over
  the exact text of the response object; ``code == "10000"`` is success.
- A notice (form POST) is verified with Alipay's public key over every non-empty parameter
  but ``sign`` and ``sign_type``, sorted, joined the same way.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from .config import ConfigError, settings_group

BEIJING = timezone(timedelta(hours=8))  # Alipay's timestamps are Beijing time
SUCCESS = "10000"
TIMEOUT = (3.05, 10)


class AlipayUnavailable(Exception):
    """Alipay could not be reached, or answered with something we cannot trust (unsigned,
    badly signed, not JSON): worth asking again later. Never carries a key."""


def _pem_or_der(value: str) -> tuple[bytes, bool]:
    """A key as Alipay's console and key tool give it (bare base64 DER), or PEM text (``\\n``
    may stand for newlines), or a path to a PEM file: (bytes, is_pem)."""
    value = value.strip()
    if "-----BEGIN" in value:
        return value.replace("\\n", "\n").encode(), True
    if value.startswith(("/", ".")):
        with open(value, "rb") as f:
            return f.read(), True
    return base64.b64decode(value), False


def load_private_key(value: str):
    """PKCS#8 or PKCS#1 (Alipay's key tool writes PKCS#1 for languages other than Java)."""
    data, pem = _pem_or_der(value)
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    return load(data, password=None)


def load_public_key(value: str):
    data, pem = _pem_or_der(value)
    return serialization.load_pem_public_key(data) if pem else serialization.load_der_public_key(data)


@dataclass(frozen=True)
class AlipaySettings:
    """The shop's Alipay app, as both services read it from the same Secret: the keys never
    show in a repr (or a log line)."""
    gateway: str
    app_id: str
    private_key: str = field(repr=False)
    public_key: str = field(repr=False)


SETTINGS = ("GATEWAY", "APP_ID", "PRIVATE_KEY", "PUBLIC_KEY")


def settings_from_env(env) -> AlipaySettings | None:
    """``LINKSHOP_ALIPAY_GATEWAY``, ``_APP_ID``, ``_PRIVATE_KEY`` (the app's), ``_PUBLIC_KEY``
    (Alipay's), all or none; None when none. The keys are loaded here, so a bad one stops the
    start with a ``ConfigError`` naming the setting, never quoting the key."""
    values = settings_group(env, "LINKSHOP_ALIPAY_", SETTINGS)
    if values is None:
        return None
    for name, load, kind in (("PRIVATE_KEY", load_private_key, RSAPrivateKey),
                             ("PUBLIC_KEY", load_public_key, RSAPublicKey)):
        try:
            key = load(values[name])
        except Exception as exc:  # ValueError, OSError, UnsupportedAlgorithm...: unusable either way
            raise ConfigError(f"LINKSHOP_ALIPAY_{name} is not a readable RSA key ({type(exc).__name__}): give PEM "
                              "text, a path to a PEM file, or bare base64 as Alipay's key tool writes it "
                              "(PKCS#8 or PKCS#1)") from None
        if not isinstance(key, kind):
            raise ConfigError(f"LINKSHOP_ALIPAY_{name} is not an RSA key: Alipay's RSA2 signs with RSA")
    return AlipaySettings(values["GATEWAY"], values["APP_ID"], values["PRIVATE_KEY"], values["PUBLIC_KEY"])


def content(params: dict, exclude=("sign",)) -> str:
    """The signed text: non-empty parameters but ``exclude``, sorted by name, ``k=v&k=v``."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in exclude and params[k] not in (None, ""))


def rsa2_sign(private_key, text: str) -> str:
    return base64.b64encode(private_key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa2_verify(public_key, text: str, signature: str) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), text.encode(), padding.PKCS1v15(),
                          hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def response_text(raw: str, key: str) -> str | None:
    """The exact text of ``key``'s object in an answer (what Alipay signed), or None."""
    at = raw.find(f'"{key}"')
    start = raw.find("{", at) if at >= 0 else -1
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(raw)):
        ch = raw[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return raw[start:i + 1]
    return None


class AlipayClient:
    def __init__(self, settings: AlipaySettings, http):
        self.gateway, self.app_id, self._http = settings.gateway, settings.app_id, http
        self._private = load_private_key(settings.private_key)
        self._alipay = load_public_key(settings.public_key)

    def signed(self, method: str, biz: dict, **extra) -> dict:
        params = {"app_id": self.app_id, "method": method, "format": "JSON", "charset": "utf-8",
                  "sign_type": "RSA2", "timestamp": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
                  "version": "1.0", "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
                  **{k: v for k, v in extra.items() if v}}
        params["sign"] = rsa2_sign(self._private, content(params))
        return params

    def page_url(self, method: str, biz: dict, **extra) -> str:
        """Where to send the buyer for a page or WAP payment (a GET to the gateway)."""
        return f"{self.gateway}?{urlencode(self.signed(method, biz, **extra))}"

    def call(self, method: str, biz: dict, **extra) -> dict:
        """The verified response object of an API call (``code`` says how it went), or
        ``AlipayUnavailable``. ``extra``: public parameters (``notify_url``)."""
        try:
            answer = self._http.post(self.gateway, data=self.signed(method, biz, **extra), timeout=TIMEOUT)
            answer.raise_for_status()
            raw = answer.content.decode("utf-8")
            signed = json.loads(raw)
        except Exception as exc:  # network, HTTP status, encoding, JSON: try again later
            raise AlipayUnavailable(f"alipay {method}: {type(exc).__name__}") from None
        key = method.replace(".", "_") + "_response"
        text = response_text(raw, key)
        if text is None or not isinstance(signed, dict) or not isinstance(signed.get(key), dict):
            raise AlipayUnavailable(f"alipay {method}: no {key} in the answer")
        # Alipay signs every answer but a refusal of our own signature (code 40002 unsigned).
        if not rsa2_verify(self._alipay, text, str(signed.get("sign") or "")):
            raise AlipayUnavailable(f"alipay {method}: the answer's signature does not verify")
        return signed[key]

    def verify_notice(self, params: dict) -> bool:
        return rsa2_verify(self._alipay, content(params, exclude=("sign", "sign_type")), str(params.get("sign") or ""))
