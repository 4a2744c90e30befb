"""catalog merchants: admin-only creation, an API key shown once and stored hashed, key
rotation, and catalog.merchant.upserted carrying the key hashes."""
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from services.catalog.models import Merchant, MerchantApiKey
from shared.outbox import Relay
from tests.kit import (assert_error, bearer, create_merchant, create_product, outbox_events,
                            service_db)

URL = "/catalog/v1/merchants"


def sha256(value):
    return hashlib.sha256(value.encode()).hexdigest()


def test_create_merchant(catalog, admin_headers):
    response = catalog.post(URL, json={"name": "Key Shop", "email": "Owner@Example.COM"}, headers=admin_headers)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "name", "email", "status", "fee_bps", "binding", "mail_keys", "api_key"}
    assert body["binding"] == {"mode": "permanent", "lock_days": None}
    assert body["id"].startswith("mer_") and body["api_key"].startswith("lsk_")
    assert body["name"] == "Key Shop" and body["email"] == "owner@example.com"
    assert body["status"] == "active" and body["fee_bps"] == 200
    other = create_merchant(catalog, fee_bps=350)
    assert other["fee_bps"] == 350
    assert other["id"] != body["id"] and other["api_key"] != body["api_key"]


def test_create_merchant_needs_the_admin_token(catalog, merchant):
    body = {"name": "x", "email": "x@example.com"}
    assert_error(catalog.post(URL, json=body), 401, "unauthorized")
    assert_error(catalog.post(URL, json=body, headers={"Authorization": "Basic abc"}), 401)
    assert_error(catalog.post(URL, json=body, headers=bearer("not-the-admin-token")), 403, "forbidden")
    assert_error(catalog.post(URL, json=body, headers=bearer(merchant["api_key"])), 403, "forbidden")


@pytest.mark.parametrize("body,field", [
    ({"email": "x@example.com"}, "name"),
    ({"name": "", "email": "x@example.com"}, "name"),
    ({"name": "x"}, "email"),
    ({"name": "x", "email": "not-an-email"}, "email"),
    ({"name": "x", "email": "x@example.com", "fee_bps": -1}, "fee_bps"),
    ({"name": "x", "email": "x@example.com", "fee_bps": 10001}, "fee_bps"),
    ({"name": "x", "email": "x@example.com", "api_key": "mine"}, "api_key"),
])
def test_create_merchant_validates_the_body(catalog, admin_headers, body, field):
    error = assert_error(catalog.post(URL, json=body, headers=admin_headers), 422, "invalid")
    assert field in error["fields"]


def test_create_merchant_bad_json(catalog, admin_headers):
    assert_error(catalog.post(URL, data="{", content_type="application/json", headers=admin_headers), 400, "bad_json")


@pytest.mark.sqlite_only("reads the SQLite files")
def test_the_api_key_is_shown_once_and_stored_hashed(embedded, catalog, admin_headers, merchant):
    key = merchant["api_key"]
    got = catalog.get(f"{URL}/{merchant['id']}", headers=admin_headers).get_json()
    assert "api_key" not in got and key not in str(got)
    db = service_db(embedded, "catalog")
    with db.read() as s:
        stored = s.scalars(select(MerchantApiKey.key_hash).where(MerchantApiKey.merchant_id == merchant["id"])).all()
    assert stored == [sha256(key)]
    db.dispose()  # let every byte reach the files
    path = Path(db.url.removeprefix("sqlite:///"))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    raw = b"".join(p.read_bytes() for p in files)
    assert sha256(key).encode() in raw  # we are looking in the right place ...
    assert key.encode() not in raw  # ... and the key itself is nowhere
    assert key[4:].encode() not in raw
    assert all(key not in str(e) for e in outbox_events(embedded, "catalog"))


def test_merchant_upserted_event(embedded, catalog, merchant):
    [event] = outbox_events(embedded, "catalog", "catalog.merchant.upserted")
    assert event["producer"] == "catalog" and event["version"] == 1
    assert event["correlation_id"] == merchant["id"]
    p = event["payload"]
    assert p["merchant_id"] == merchant["id"] and p["name"] == merchant["name"]
    assert p["status"] == "active" and p["fee_bps"] == 200
    assert p["api_key_hashes"] == [sha256(merchant["api_key"])]
    assert p["binding"] == {"mode": "permanent", "lock_days": None}
    assert p["mail_keys"] is True  # the buyer's e-mail carries the keys unless the merchant says otherwise
    assert "email" not in p  # not in the contract; other services have no need of it
    spec = next(s for s in embedded.hub.specs if s.service == "catalog")
    Relay(spec.db, spec.outbox, embedded.bus).run_once()
    assert {s: embedded.bus.pending(s) for s in ("delivery", "referral", "payout", "risk", "catalog")} == \
        {"delivery": 1, "referral": 1, "payout": 1, "risk": 0, "catalog": 0}


def test_get_merchant(catalog, admin_headers, merchant):
    url = f"{URL}/{merchant['id']}"
    expected = {k: merchant[k] for k in ("id", "name", "email", "status", "fee_bps", "binding", "mail_keys")}
    assert catalog.get(url, headers=admin_headers).get_json() == expected
    assert catalog.get(url, headers=bearer(merchant["api_key"])).get_json() == expected
    other = create_merchant(catalog)
    assert_error(catalog.get(url, headers=bearer(other["api_key"])), 404, "not_found")
    assert_error(catalog.get(url), 401, "unauthorized")
    assert_error(catalog.get(url, headers=bearer("lsk_wrong")), 401, "unauthorized")
    assert_error(catalog.get(f"{URL}/mer_missing", headers=admin_headers), 404, "not_found")


def test_rotate_api_key(embedded, catalog, admin_headers, merchant):
    old = merchant["api_key"]
    url = f"{URL}/{merchant['id']}/api-key"
    response = catalog.post(url, headers=bearer(old))
    assert response.status_code == 201
    new = response.get_json()["api_key"]
    assert new != old and response.get_json()["id"] == merchant["id"]
    assert_error(catalog.post("/catalog/v1/products", json={"title": "t", "price_cents": 1},
                              headers=bearer(old)), 401, "unauthorized")
    create_product(catalog, new)
    events = outbox_events(embedded, "catalog", "catalog.merchant.upserted")
    assert [e["payload"]["version"] for e in events] == [1, 2]
    assert events[-1]["payload"]["api_key_hashes"] == [sha256(new)]  # the old one is revoked
    by_admin = catalog.post(url, headers=admin_headers)
    assert by_admin.status_code == 201
    assert_error(catalog.get(f"{URL}/{merchant['id']}", headers=bearer(new)), 401)


def test_rotate_api_key_refusals(catalog, merchant):
    url = f"{URL}/{merchant['id']}/api-key"
    other = create_merchant(catalog)
    assert_error(catalog.post(url), 401, "unauthorized")
    assert_error(catalog.post(url, headers=bearer("lsk_nope")), 401, "unauthorized")
    assert_error(catalog.post(url, headers=bearer(other["api_key"])), 404, "not_found")
    assert_error(catalog.post(f"{URL}/mer_missing/api-key", headers=bearer(other["api_key"])), 404)
    # The refused attempts changed nothing: the merchant's key still works.
    assert catalog.get(f"{URL}/{merchant['id']}", headers=bearer(merchant["api_key"])).status_code == 200


def test_merchant_is_stored(embedded, merchant):
    with service_db(embedded, "catalog").read() as s:
        m = s.get(Merchant, merchant["id"])
        assert m.created_at.tzinfo is not None and m.version == 1
