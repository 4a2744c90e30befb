"""The card-key vault: AES-256-GCM at rest, and a keyed fingerprint for de-duplication.

Both keys are derived (HKDF) from ``LINKSHOP_VAULT_KEY``. Each ciphertext names the key it
was sealed with and is bound to its product (associated data), so a row copied onto another
product does not decrypt. A third key signs the order links in buyers' e-mails
(``order_link_token``). To rotate: set the new key, list the old one in
``LINKSHOP_VAULT_PREVIOUS_KEYS``, run ``python -m services.manage rotate-vault``, then drop it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = b"\x01"


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"linkshop-vault", info=purpose) \
        .derive(secret.encode())


class _Key:
    def __init__(self, secret: str):
        if not secret or len(secret) < 16:
            raise ValueError("a vault key must be at least 16 characters")
        encryption = _derive(secret, b"encrypt")
        self.id = hashlib.sha256(encryption).digest()[:4]  # names the key, reveals nothing of it
        self.aead = AESGCM(encryption)
        self.fingerprint_key = _derive(secret, b"fingerprint")
        self.link_key = _derive(secret, b"order-link")


class Vault:
    def __init__(self, secret: str, previous: tuple[str, ...] | list[str] = ()):
        self._current = _Key(secret)
        self._keys = {self._current.id: self._current}
        for old in previous:
            key = _Key(old)
            self._keys.setdefault(key.id, key)

    def encrypt(self, product_id: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        return FORMAT_V1 + self._current.id + nonce + self._current.aead.encrypt(
            nonce, secret.encode(), product_id.encode())

    def decrypt(self, product_id: str, blob: bytes) -> str:
        blob = bytes(blob)
        if blob[:1] != FORMAT_V1:
            raise ValueError("unknown vault format")
        key = self._keys.get(blob[1:5])
        if key is None:
            raise ValueError("sealed with a vault key that is not configured")
        return key.aead.decrypt(blob[5:17], blob[17:], product_id.encode()).decode()

    def is_current(self, blob: bytes) -> bool:
        return bytes(blob)[1:5] == self._current.id

    def fingerprint(self, product_id: str, secret: str) -> str:
        return self._fingerprint(self._current, product_id, secret)

    def all_fingerprints(self, product_id: str, secret: str) -> list[str]:
        """Under every configured key: during a rotation, old rows keep their old fingerprints."""
        return [self._fingerprint(key, product_id, secret) for key in self._keys.values()]

    @staticmethod
    def _fingerprint(key: _Key, product_id: str, secret: str) -> str:
        return hmac.new(key.fingerprint_key, f"{product_id}\0{secret}".encode(), hashlib.sha256).hexdigest()

    def order_link_token(self, order_no: str) -> str:
        """The token of an order's link in the buyer's e-mail: it reads the order as the access
        token does. Only the access token's hash is stored, so the mail cannot carry that one;
        this one is derived (HMAC-SHA256 of ``linkshop.order-link|<order_no>``) and stored nowhere."""
        return self._link_token(self._current, order_no)

    def check_order_link(self, order_no: str, token: str) -> bool:
        """Constant-time, under every configured key: a rotation does not break the links
        already mailed (until the old key is dropped)."""
        ok = False
        for key in self._keys.values():
            ok |= hmac.compare_digest(self._link_token(key, order_no).encode(), token.encode())
        return ok

    @staticmethod
    def _link_token(key: _Key, order_no: str) -> str:
        digest = hmac.new(key.link_key, f"linkshop.order-link|{order_no}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
