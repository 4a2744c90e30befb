"""A merchant chooses whether the buyer's e-mail carries the keys or only the order link
(``mail_keys``, default true); delivery learns it from catalog.merchant.upserted."""
from tests.kit import assert_error, bearer, outbox_events

URL = "/catalog/v1/merchants/me"


def _payloads(embedded, merchant_id):
    return [e["payload"] for e in outbox_events(embedded, "catalog", "catalog.merchant.upserted")
            if e["payload"]["merchant_id"] == merchant_id]


def test_link_only_mail_is_the_merchants_choice(embedded, catalog, merchant):
    key = bearer(merchant["api_key"])
    assert catalog.get(URL, headers=key).json["mail_keys"] is True
    r = catalog.patch(URL, json={"mail_keys": False}, headers=key)
    assert r.status_code == 200 and r.json["mail_keys"] is False
    assert catalog.patch(URL, json={"mail_keys": False}, headers=key).json["mail_keys"] is False  # no change
    assert [(p["version"], p["mail_keys"]) for p in _payloads(embedded, merchant["id"])] == [(1, True), (2, False)]
    assert_error(catalog.patch(URL, json={"mail_keys": "no"}, headers=key), 422)
    assert_error(catalog.patch(URL, json={"mail_keys": 0}, headers=key), 422)
    assert_error(catalog.patch(URL, json={"mail_keys": False}), 401, "unauthorized")
