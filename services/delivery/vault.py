"""The card-key vault: AES-256-GCM at rest, and a keyed fingerprint for de-duplication.

Both keys are derived (HKDF) from ``LINKSHOP_VAULT_KEY``. Each ciphertext is bound to its
product (associated data), so a row copied onto another product does not decrypt.
"""
from __future__ import annotations

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


class Vault:
    def __init__(self, secret: str):
        if not secret or len(secret) < 16:
            raise ValueError("LINKSHOP_VAULT_KEY must be at least 16 characters")
        self._aead = AESGCM(_derive(secret, b"encrypt"))
        self._fingerprint_key = _derive(secret, b"fingerprint")

    def encrypt(self, product_id: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        return FORMAT_V1 + nonce + self._aead.encrypt(nonce, secret.encode(), product_id.encode())

    def decrypt(self, product_id: str, blob: bytes) -> str:
        blob = bytes(blob)
        if blob[:1] != FORMAT_V1:
            raise ValueError("unknown vault format")
        return self._aead.decrypt(blob[1:13], blob[13:], product_id.encode()).decode()

    def fingerprint(self, product_id: str, secret: str) -> str:
        return hmac.new(self._fingerprint_key, f"{product_id}\0{secret}".encode(), hashlib.sha256).hexdigest()
