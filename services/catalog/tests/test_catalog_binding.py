"""A merchant's referral binding rule (design §6): permanent by default, or a lock period it
chooses with its own key; the operator may set it too. Carried in catalog.merchant.upserted."""
import pytest
from sqlalchemy import create_engine, text

from services.manage import upgrade
from tests.kit import assert_error, bearer, create_merchant, outbox_events

URL = "/catalog/v1/merchants"
LOCK_30 = {"mode": "lock", "lock_days": 30}


def binding_events(embedded, merchant_id):
    return [e["payload"] for e in outbox_events(embedded, "catalog", "catalog.merchant.upserted")
            if e["payload"]["merchant_id"] == merchant_id]


def test_a_merchant_sets_its_own_lock_period(embedded, catalog, merchant):
    key = bearer(merchant["api_key"])
    r = catalog.patch(f"{URL}/me", json={"binding": LOCK_30}, headers=key)
    assert r.status_code == 200, r.json
    assert r.json["id"] == merchant["id"] and r.json["binding"] == LOCK_30
    assert catalog.get(f"{URL}/me", headers=key).json["binding"] == LOCK_30
    assert catalog.get(f"{URL}/{merchant['id']}", headers=key).json["binding"] == LOCK_30
    events = binding_events(embedded, merchant["id"])
    assert [(e["version"], e["binding"]) for e in events] == \
        [(1, {"mode": "permanent", "lock_days": None}), (2, LOCK_30)]
    assert events[-1]["api_key_hashes"] == events[0]["api_key_hashes"]  # the rest of the merchant stays
    # back to permanent; sending the rule it already has announces nothing
    r = catalog.patch(f"{URL}/me", json={"binding": {"mode": "permanent"}}, headers=key)
    assert r.json["binding"] == {"mode": "permanent", "lock_days": None}
    assert catalog.patch(f"{URL}/me", json={"binding": {"mode": "permanent", "lock_days": None}},
                         headers=key).status_code == 200
    assert catalog.patch(f"{URL}/me", json={}, headers=key).status_code == 200
    assert [e["version"] for e in binding_events(embedded, merchant["id"])] == [1, 2, 3]


def test_the_operator_or_the_merchant_itself_sets_it_by_id(embedded, catalog, admin_headers, merchant):
    url = f"{URL}/{merchant['id']}"
    other = create_merchant(catalog)
    assert_error(catalog.patch(url, json={"binding": LOCK_30}), 401, "unauthorized")
    assert_error(catalog.patch(url, json={"binding": LOCK_30}, headers=bearer(other["api_key"])), 404)
    assert_error(catalog.patch(f"{URL}/me", json={"binding": LOCK_30}), 401, "unauthorized")
    assert_error(catalog.patch(f"{URL}/mer_missing", json={"binding": LOCK_30}, headers=admin_headers), 404)
    r = catalog.patch(url, json={"binding": {"mode": "lock", "lock_days": 7}}, headers=admin_headers)
    assert r.status_code == 200 and r.json["binding"] == {"mode": "lock", "lock_days": 7}
    r = catalog.patch(url, json={"binding": LOCK_30}, headers=bearer(merchant["api_key"]))
    assert r.status_code == 200 and r.json["binding"] == LOCK_30
    assert [e["binding"]["lock_days"] for e in binding_events(embedded, merchant["id"])] == [None, 7, 30]
    assert catalog.get(f"{URL}/{other['id']}", headers=admin_headers).json["binding"]["mode"] == "permanent"


@pytest.mark.parametrize("binding,field", [
    ({"mode": "lock"}, "lock_days"),
    ({"mode": "lock", "lock_days": None}, "lock_days"),
    ({"mode": "lock", "lock_days": 0}, "lock_days"),
    ({"mode": "lock", "lock_days": 3651}, "lock_days"),
    ({"mode": "lock", "lock_days": "30"}, "lock_days"),
    ({"mode": "permanent", "lock_days": 30}, "lock_days"),
    ({"mode": "forever"}, "mode"),
    ({"lock_days": 30}, "mode"),
    ({"mode": "lock", "lock_days": 30, "grace_days": 1}, "grace_days"),
])
def test_a_bad_rule_is_refused_and_changes_nothing(embedded, catalog, merchant, binding, field):
    key = bearer(merchant["api_key"])
    error = assert_error(catalog.patch(f"{URL}/me", json={"binding": binding}, headers=key), 422, "invalid")
    assert field in error["fields"]["binding"]
    assert catalog.get(f"{URL}/me", headers=key).json["binding"] == {"mode": "permanent", "lock_days": None}
    assert len(binding_events(embedded, merchant["id"])) == 1


def test_other_bad_patches(catalog, merchant):
    key = bearer(merchant["api_key"])
    assert_error(catalog.patch(f"{URL}/me", json={"fee_bps": 0}, headers=key), 422, "invalid")
    assert_error(catalog.patch(f"{URL}/me", json={"binding": "lock"}, headers=key), 422, "invalid")
    assert_error(catalog.patch(f"{URL}/me", data="[", content_type="application/json", headers=key), 400)
    assert catalog.get(f"{URL}/me", headers=key).json["fee_bps"] == 200


def test_an_existing_deployment_upgrades_to_permanent_merchants(backend, tmp_path):
    url = backend.empty_database(tmp_path, "catalog")
    upgrade("catalog", url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO merchants (id, name, email, status, fee_bps, version, created_at) "
                          "VALUES ('mer_old', 'Old', 'o@example.com', 'active', 200, 3, '2026-01-01')"))
    upgrade("catalog", url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT binding_mode, binding_lock_days, version FROM merchants")).one()
    engine.dispose()
    assert tuple(row) == ("permanent", None, 3)
