import sqlite3

import pytest
from cryptography.exceptions import InvalidTag

from services.delivery.vault import Vault


def test_encrypt_round_trip_and_binding_to_product():
    vault = Vault("x" * 32)
    blob = vault.encrypt("prd_1", "SECRET-KEY-1")
    assert b"SECRET-KEY-1" not in blob
    assert vault.decrypt("prd_1", blob) == "SECRET-KEY-1"
    with pytest.raises(InvalidTag):
        vault.decrypt("prd_2", blob)  # a row moved to another product does not decrypt
    with pytest.raises(ValueError, match="sealed with a vault key that is not configured"):
        Vault("y" * 32).decrypt("prd_1", blob)


def test_fingerprint_is_keyed_and_per_product():
    a, b = Vault("a" * 32), Vault("b" * 32)
    # the same key gives the same fingerprint in another process (a new Vault), or dedupe breaks
    assert a.fingerprint("p", "K") == Vault("a" * 32).fingerprint("p", "K")
    assert len(a.fingerprint("p", "K")) == 64 and a.fingerprint("p", "K") != a.fingerprint("p", "K2")
    assert a.fingerprint("p", "K") != b.fingerprint("p", "K")
    assert a.fingerprint("p", "K") != a.fingerprint("q", "K")


def test_short_vault_key_refused():
    with pytest.raises(ValueError):
        Vault("short")


@pytest.mark.sqlite_only("reads the SQLite file")
def test_import_encrypts_at_rest_and_dedupes(shop, tmp_path):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    result = shop.import_keys(merchant, pid, ["AAA-111", "BBB-222", "AAA-111", "", "  ", 42, "x\x00y"])
    assert result == {"imported": 2, "duplicates": 1, "rejected": 4}
    again = shop.import_keys(merchant, pid, ["AAA-111", "CCC-333"])
    assert again == {"imported": 1, "duplicates": 1, "rejected": 0}
    raw = (tmp_path / "delivery.db").read_bytes()
    for secret in (b"AAA-111", b"BBB-222", b"CCC-333"):
        assert secret not in raw
    with sqlite3.connect(tmp_path / "delivery.db") as conn:
        assert conn.execute("select count(*) from card_keys").fetchone()[0] == 3


def test_import_needs_the_owning_merchant(shop):
    owner, _ = shop.merchant("Owner")
    other, _ = shop.merchant("Other")
    pid = shop.product(owner)
    assert shop.delivery.post(f"/delivery/v1/products/{pid}/keys", json={"keys": ["K"]}).status_code == 401
    r = shop.delivery.post(f"/delivery/v1/products/{pid}/keys", json={"keys": ["K"]}, headers=other)
    assert r.status_code == 404
    r = shop.delivery.post(f"/delivery/v1/products/{pid}/keys", json={"keys": []}, headers=owner)
    assert r.status_code == 422 and "keys" in r.json["error"]["fields"]
    r = shop.delivery.post(f"/delivery/v1/products/{pid}/keys", json={"keys": ["K"], "extra": 1}, headers=owner)
    assert r.status_code == 422


def test_hundred_thousand_keys_in_one_request(shop):
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    keys = [f"KEY-{i:06d}-{i * 7919 % 100003:06d}" for i in range(100_000)]
    assert shop.import_keys(merchant, pid, keys) == {"imported": 100_000, "duplicates": 0, "rejected": 0}
    summary = shop.delivery.get(f"/delivery/v1/products/{pid}/keys", headers=merchant).json
    assert summary["available"] == 100_000
    order = shop.buy(pid, quantity=3)
    assert shop.view(order)["keys"] == keys[:3]


def test_rotation_keeps_old_keys_readable_and_dedupe_working(make_shop, tmp_path):
    old_key, new_key = "old-vault-key-0123456789", "new-vault-key-9876543210"
    shop = make_shop(LINKSHOP_VAULT_KEY=old_key)
    merchant, _ = shop.merchant()
    pid = shop.product(merchant)
    shop.import_keys(merchant, pid, ["OLD-1", "OLD-2"])
    first = shop.buy(pid)
    # restart on the same databases with a new key, the old one listed as previous
    from services.delivery import domain
    env = {"LINKSHOP_VAULT_KEY": new_key, "LINKSHOP_VAULT_PREVIOUS_KEYS": old_key}
    system = shop.rebuild(**env)
    delivery = system.apps["delivery"].test_client()
    r = delivery.get(f"/delivery/v1/orders/{first['order_no']}?token={first['access_token']}")
    assert r.json["keys"] == ["OLD-1"]
    r = delivery.post(f"/delivery/v1/products/{pid}/keys", json={"keys": ["OLD-2", "NEW-1"]}, headers=merchant)
    assert r.json == {"imported": 1, "duplicates": 1, "rejected": 0}
    context = system.apps["delivery"].extensions["linkshop"]
    with context.db.write() as s:
        assert domain.rotate_vault(s, context.extra["vault"]) == 2
    with context.db.write() as s:
        assert domain.rotate_vault(s, context.extra["vault"]) == 0
    # after rotation the previous key is no longer needed
    system2 = shop.rebuild(**{**env, "LINKSHOP_VAULT_PREVIOUS_KEYS": ""})
    r = system2.apps["delivery"].test_client().get(f"/delivery/v1/orders/{first['order_no']}?token={first['access_token']}")
    assert r.json["keys"] == ["OLD-1"]
    r = system2.apps["delivery"].test_client().post(f"/delivery/v1/products/{pid}/keys",
                                                    json={"keys": ["OLD-2"]}, headers=merchant)
    assert r.json["duplicates"] == 1
