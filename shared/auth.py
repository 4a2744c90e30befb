"""Bearer tokens: the operator's admin token and merchant API keys (stored hashed)."""
from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import request

from .errors import ApiError


def new_api_key() -> str:
    return "lsk_" + secrets.token_urlsafe(32)


def hash_secret(value: str) -> str:
    """SHA-256 is enough for random 256-bit tokens (no dictionary to guess from)."""
    return hashlib.sha256(value.encode()).hexdigest()


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_admin(admin_token: str, token: str | None = None) -> bool:
    token = bearer_token() if token is None else token
    return bool(token) and hmac.compare_digest(token.encode(), admin_token.encode())


def require_admin(admin_token: str) -> None:
    token = bearer_token()
    if not token:
        raise ApiError(401, "unauthorized", "a bearer token is required")
    if not is_admin(admin_token, token):
        raise ApiError(403, "forbidden", "the admin token is required")


USER_TOKEN_SALT = "linkshop.user"
USER_TOKEN_MAX_AGE_S = 30 * 24 * 3600


def issue_user_token(token_secret: str, user_id: str) -> str:
    """A distributor's token, signed so every service can verify it without asking referral."""
    from itsdangerous import URLSafeTimedSerializer
    return URLSafeTimedSerializer(token_secret, salt=USER_TOKEN_SALT).dumps({"uid": user_id})


def verify_user_token(token_secret: str, token: str | None) -> str | None:
    from itsdangerous import BadSignature, URLSafeTimedSerializer
    if not token:
        return None
    try:
        data = URLSafeTimedSerializer(token_secret, salt=USER_TOKEN_SALT).loads(token, max_age=USER_TOKEN_MAX_AGE_S)
    except BadSignature:
        return None
    return data.get("uid") if isinstance(data, dict) else None
