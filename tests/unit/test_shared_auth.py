"""shared.auth: bearer tokens, the admin token, API keys stored as hashes."""
import hashlib

import pytest
from flask import Flask

from shared.auth import bearer_token, hash_secret, is_admin, new_api_key, require_admin
from shared.errors import ApiError

app = Flask(__name__)


def test_api_keys_are_random_and_hashed_with_sha256():
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50
    key = keys.pop()
    assert key.startswith("lsk_") and len(key) > 40
    assert hash_secret(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_secret(key) != key


@pytest.mark.parametrize("header,expected", [
    (None, None), ("", None), ("Bearer", None), ("Bearer   ", None), ("Basic abc", None),
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
])
def test_bearer_token_parsing(header, expected):
    headers = {"Authorization": header} if header is not None else {}
    with app.test_request_context(headers=headers):
        assert bearer_token() == expected


def test_admin_checks():
    with app.test_request_context(headers={"Authorization": "Bearer s3cret"}):
        assert is_admin("s3cret")
        assert not is_admin("other")
        require_admin("s3cret")
        with pytest.raises(ApiError) as info:
            require_admin("other")
        assert (info.value.status, info.value.code) == (403, "forbidden")
    with app.test_request_context():
        assert not is_admin("s3cret")
        assert not is_admin("s3cret", token="")
        with pytest.raises(ApiError) as info:
            require_admin("s3cret")
        assert (info.value.status, info.value.code) == (401, "unauthorized")
