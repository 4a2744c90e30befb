"""Who a buyer is, as two services must agree on it: referral hashes registered emails and
risk hashes buyers' emails, and self-referral is found where the two hashes meet."""
from __future__ import annotations

import hashlib


def normalise_email(email: str) -> str:
    """Case, and for Gmail-style mailboxes the dots and +tags, do not make another person."""
    local, _, domain = email.strip().lower().rpartition("@")
    if domain in ("gmail.com", "googlemail.com"):
        local = local.split("+", 1)[0].replace(".", "")
        domain = "gmail.com"
    return f"{local}@{domain}"


def email_hash(email: str) -> str:
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()
