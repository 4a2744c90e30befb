"""Design §6 binding: permanent by default; a merchant may choose a lock period after which a
new invite rebinds a user bound in its shop; bindings outside any shop follow the operator's
default; never a cycle."""
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

from services.referral.models import Merchant, User
from shared.events import utcnow
from services.manage import upgrade
from tests.kit import envelope, event_payloads, inject


def db(shop):
    return shop.system.apps["referral"].extensions["linkshop"].db


def shop_with_rule(shop, binding=None, name="Shop"):
    """A merchant whose rule has reached referral; ``binding`` is set with its own key."""
    headers, merchant_id = shop.merchant(name)
    if binding:
        r = shop.catalog.patch("/catalog/v1/merchants/me", json={"binding": binding}, headers=headers)
        assert r.status_code == 200, r.json
        shop.drain()
    return merchant_id


def bind(shop, user, inviter, merchant_id=None, as_user=None):
    body = {"invite_code": inviter["invite_code"], **({"merchant_id": merchant_id} if merchant_id else {})}
    return shop.referral.post(f"/referral/v1/users/{user['user_id']}/bind", json=body,
                              headers=shop.as_user(as_user or user))


def view(shop, user):
    return shop.referral.get(f"/referral/v1/users/{user['user_id']}", headers=shop.as_user(user)).json


def bound_days_ago(shop, user, days):
    with db(shop).write() as s:
        s.get(User, user["user_id"]).bound_at = utcnow() - timedelta(days=days)


def set_default(shop, mode, lock_days=0):
    r = shop.referral.put("/referral/v1/settings/binding", json={"mode": mode, "lock_days": lock_days},
                          headers=shop.admin)
    assert r.status_code == 200, r.json


def test_a_merchant_lock_holds_until_its_period_ends(shop):
    mid = shop_with_rule(shop, {"mode": "lock", "lock_days": 30})
    with db(shop).read() as s:
        m = s.get(Merchant, mid)
        assert (m.binding_mode, m.binding_lock_days, m.version) == ("lock", 30, 2)
    a, c = shop.user("a@example.com"), shop.user("c@example.com")
    b = shop.user("b@example.com", a["invite_code"], merchant_id=mid)
    assert b["bound_merchant_id"] == mid and b["binding_mode"] == "lock"
    until = b["locked_until"]
    assert until[:10] == (utcnow() + timedelta(days=30)).date().isoformat()
    r = bind(shop, b, c)
    assert r.status_code == 409 and r.json["error"]["code"] == "binding_locked"
    assert until[:19] in r.json["error"]["message"]  # it says until when
    assert view(shop, b)["parent_id"] == a["user_id"]
    bound_days_ago(shop, b, 29)
    assert bind(shop, b, c).status_code == 409
    bound_days_ago(shop, b, 31)
    other = shop_with_rule(shop, name="Other")
    r = bind(shop, b, c, merchant_id=other)
    assert r.status_code == 200, r.json
    assert (r.json["parent_id"], r.json["bound_merchant_id"]) == (c["user_id"], other)
    # the new binding is the other shop's, and that one is permanent
    assert (r.json["binding_mode"], r.json["locked_until"]) == ("permanent", None)
    bound_days_ago(shop, b, 3650)
    assert bind(shop, b, a).status_code == 409


def test_a_permanent_merchant_never_allows_a_rebind(shop):
    set_default(shop, "lock", 0)  # the operator's default does not apply inside a shop
    mid = shop_with_rule(shop)
    a, c = shop.user("a@example.com"), shop.user("c@example.com")
    b = shop.user("b@example.com", a["invite_code"], merchant_id=mid)
    assert (b["binding_mode"], b["locked_until"]) == ("permanent", None)
    bound_days_ago(shop, b, 3650)
    r = bind(shop, b, c, merchant_id=mid)
    assert r.status_code == 409 and "permanently" in r.json["error"]["message"]
    assert view(shop, b)["parent_id"] == a["user_id"]


def test_a_binding_outside_any_shop_follows_the_operator_default(shop):
    shop_with_rule(shop, {"mode": "lock", "lock_days": 1})  # a shop's rule does not apply outside it
    a, c = shop.user("a@example.com"), shop.user("c@example.com")
    b = shop.user("b@example.com", a["invite_code"])
    assert b["bound_merchant_id"] is None and b["binding_mode"] == "permanent"
    bound_days_ago(shop, b, 100)
    assert bind(shop, b, c).status_code == 409
    set_default(shop, "lock", 7)
    bound_days_ago(shop, b, 6)
    r = bind(shop, b, c)
    assert r.status_code == 409 and view(shop, b)["locked_until"][:19] in r.json["error"]["message"]
    bound_days_ago(shop, b, 8)
    assert view(shop, b)["locked_until"] is None
    r = bind(shop, b, c)
    assert r.status_code == 200 and r.json["parent_id"] == c["user_id"]


def test_a_merchant_rule_change_applies_to_bindings_already_made(shop):
    headers, mid = shop.merchant()
    a, c = shop.user("a@example.com"), shop.user("c@example.com")
    b = shop.user("b@example.com", a["invite_code"], merchant_id=mid)
    bound_days_ago(shop, b, 10)
    assert bind(shop, b, c).status_code == 409
    shop.catalog.patch("/catalog/v1/merchants/me", json={"binding": {"mode": "lock", "lock_days": 30}},
                       headers=headers)
    shop.drain()
    assert bind(shop, b, c).status_code == 409  # measured from bound_at: 20 days to go
    shop.catalog.patch("/catalog/v1/merchants/me", json={"binding": {"mode": "lock", "lock_days": 7}},
                       headers=headers)
    shop.drain()
    assert bind(shop, b, c).status_code == 200


def test_a_rebind_that_would_make_a_cycle_is_refused_even_when_unlocked(shop):
    mid = shop_with_rule(shop, {"mode": "lock", "lock_days": 1})
    root = shop.user("root@example.com")
    a = shop.user("a@example.com", root["invite_code"], merchant_id=mid)
    b = shop.user("b@example.com", a["invite_code"], merchant_id=mid)
    c = shop.user("c@example.com", b["invite_code"], merchant_id=mid)
    d = shop.user("d@example.com", c["invite_code"], merchant_id=mid)
    for user in (a, b, c, d):
        bound_days_ago(shop, user, 2)
    r = bind(shop, a, d, merchant_id=mid)  # d is three levels below a
    assert r.status_code == 422 and r.json["error"]["code"] == "would_create_cycle"
    assert "invite_code" in r.json["error"]["fields"]
    assert view(shop, a)["parent_id"] == root["user_id"] and view(shop, d)["parent_id"] == c["user_id"]


def test_an_unknown_merchant_is_refused_and_changes_nothing(shop):
    mid = shop_with_rule(shop, {"mode": "lock", "lock_days": 1})
    a, c = shop.user("a@example.com"), shop.user("c@example.com")
    for bad in ("mer_missing", ""):
        r = shop.referral.post("/referral/v1/users", json={"email": "b@example.com", "invite_code": a["invite_code"],
                                                            "merchant_id": bad})
        assert r.status_code == 422 and "merchant_id" in r.json["error"]["fields"]
    b = shop.user("b@example.com", a["invite_code"], merchant_id=mid)  # the refusals registered nobody
    bound_days_ago(shop, b, 2)
    r = bind(shop, b, c, merchant_id="mer_missing")
    assert r.status_code == 422 and r.json["error"]["code"] == "unknown_merchant"
    assert r.json["error"]["fields"] == {"merchant_id": ["unknown merchant"]}
    after = view(shop, b)
    assert (after["parent_id"], after["bound_merchant_id"]) == (a["user_id"], mid)


def test_the_events_carry_the_shop_and_an_older_rule_never_wins(shop):
    inject(shop.system, "referral", envelope("catalog.merchant.upserted", {
        "merchant_id": "mer_x", "name": "X", "status": "active", "fee_bps": 100, "api_key_hashes": [],
        "binding": {"mode": "lock", "lock_days": 10}, "version": 5}))
    shop.drain()
    inject(shop.system, "referral", envelope("catalog.merchant.upserted", {
        "merchant_id": "mer_x", "name": "X", "status": "active", "fee_bps": 100, "api_key_hashes": [],
        "binding": {"mode": "permanent", "lock_days": None}, "version": 4}))
    inject(shop.system, "referral", envelope("catalog.merchant.upserted", {  # from before the rule existed
        "merchant_id": "mer_y", "name": "Y", "status": "active", "fee_bps": 100, "api_key_hashes": [],
        "version": 1}))
    shop.drain()
    with db(shop).read() as s:
        assert [(m.id, m.binding_mode, m.binding_lock_days, m.version) for m in s.scalars(
            select(Merchant).where(Merchant.id.in_(["mer_x", "mer_y"])).order_by(Merchant.id))] == \
            [("mer_x", "lock", 10, 5), ("mer_y", "permanent", None, 1)]
    a = shop.user("a@example.com")
    b = shop.user("b@example.com", a["invite_code"], merchant_id="mer_x")
    assert b["locked_until"][:10] == (utcnow() + timedelta(days=10)).date().isoformat()
    assert event_payloads(shop.system, "referral", "referral.user.registered")[-1]["merchant_id"] == "mer_x"
    bound_days_ago(shop, b, 11)
    c = shop.user("c@example.com")
    assert bind(shop, b, c).status_code == 200
    assert event_payloads(shop.system, "referral", "referral.user.bound")[-1]["merchant_id"] is None


def test_an_existing_deployment_upgrades_with_its_bindings_intact(backend, tmp_path):
    url = backend.empty_database(tmp_path, "referral")
    upgrade("referral", url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO merchants (id, fee_bps, version) VALUES ('mer_old', 200, 2)"))
        conn.execute(text("INSERT INTO users (id, email, email_hash, invite_code, parent_id, path, depth, bound_at, "
                          "created_at) VALUES ('usr_1', 'u@example.com', 'h', 'ABCDEFGH', 'usr_0', '/usr_0/', 1, "
                          "'2026-01-01', '2026-01-01')"))
    upgrade("referral", url)
    with engine.connect() as conn:
        merchant = conn.execute(text("SELECT binding_mode, binding_lock_days FROM merchants")).one()
        user = conn.execute(text("SELECT parent_id, bound_merchant_id FROM users")).one()
    engine.dispose()
    assert tuple(merchant) == ("permanent", None) and tuple(user) == ("usr_0", None)


@pytest.mark.parametrize("body", [{"invite_code": "ABCDEFGH", "merchant_id": 5},
                                  {"invite_code": "ABCDEFGH", "merchant_id": "m" * 41}])
def test_a_malformed_merchant_id_is_refused(shop, body):
    a = shop.user("a@example.com")
    r = shop.referral.post(f"/referral/v1/users/{a['user_id']}/bind", json=body, headers=shop.as_user(a))
    assert r.status_code == 422 and "merchant_id" in r.json["error"]["fields"]
