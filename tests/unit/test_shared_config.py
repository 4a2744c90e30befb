"""shared.config: real mode refuses to start without the secrets a service uses (and only
those: the vault key is delivery's alone, the user-token secret is not catalog's or risk's);
embedded mode generates dev secrets once, keeps them in var/dev-secrets.json and says so;
the environment wins."""
import json
import stat

import pytest

from services.delivery.config import load_config as load_delivery_config
from shared.config import (GENERATED_SECRETS, KERNEL_SECRETS, SERVICES, ConfigError, database_url,
                           load_settings)

REAL_SECRETS = {"LINKSHOP_ADMIN_TOKEN": "admin-x", "LINKSHOP_VAULT_KEY": "vault-key-0123456789abcdef",
                "LINKSHOP_TOKEN_SECRET": "token-x"}
AMQP = "amqp://guest:secretpw@127.0.0.1:5672//"


def real_env(tmp_path, **extra):
    return {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_URL": AMQP, **extra}


def load_service(service, env):
    """What the service's processes load: the kernel's settings, then its own config."""
    settings = load_settings(service, env)
    return settings, (load_delivery_config(settings, env) if service == "delivery" else None)


REQUIRED = [(svc, name) for svc in SERVICES for name in KERNEL_SECRETS[svc]] + [("delivery", "LINKSHOP_VAULT_KEY")]


@pytest.mark.parametrize("service,missing", REQUIRED)
def test_real_mode_refuses_to_start_without_each_secret(tmp_path, service, missing):
    env = real_env(tmp_path, **REAL_SECRETS)
    del env[missing]
    with pytest.raises(ConfigError) as info:
        load_service(service, env)
    assert missing in str(info.value)
    assert "secretpw" not in str(info.value)  # the broker password is not echoed
    assert not (tmp_path / "dev-secrets.json").exists()


def test_real_mode_refuses_an_empty_secret(tmp_path):
    with pytest.raises(ConfigError):
        load_settings("delivery", real_env(tmp_path, **{**REAL_SECRETS, "LINKSHOP_ADMIN_TOKEN": ""}))


def test_real_mode_with_secrets_generates_nothing(tmp_path):
    s = load_settings("catalog", real_env(tmp_path, **REAL_SECRETS))
    assert not s.embedded
    assert s.generated == ()
    assert s.admin_token == "admin-x"
    assert s.token_secret is None  # catalog checks no user token: not even read
    assert not hasattr(s, "vault_key"), "the vault key is delivery's own setting"
    assert s.sandbox_secret is None  # no dev default outside embedded mode
    assert s.public_url == "http://127.0.0.1:8081"
    d, config = load_service("delivery", real_env(tmp_path, **REAL_SECRETS))
    assert (d.admin_token, config.vault_key, d.token_secret) == ("admin-x", "vault-key-0123456789abcdef", "token-x")
    assert d.generated == () and config.generated == ()
    assert not (tmp_path / "dev-secrets.json").exists()


@pytest.mark.parametrize("service", [svc for svc in SERVICES if svc != "delivery"])
def test_only_delivery_needs_the_vault_key_in_real_mode(tmp_path, service):
    env = real_env(tmp_path, **{k: v for k, v in REAL_SECRETS.items() if k != "LINKSHOP_VAULT_KEY"},
                   LINKSHOP_VAULT_PREVIOUS_KEYS="old-vault-key-0123456789")
    s, _ = load_service(service, env)
    assert not s.embedded and s.admin_token == "admin-x"
    with pytest.raises(ConfigError, match="LINKSHOP_VAULT_KEY"):
        load_service("delivery", env)
    assert not (tmp_path / "dev-secrets.json").exists()


@pytest.mark.parametrize("service", ["catalog", "risk"])
def test_services_that_check_no_user_token_start_without_its_secret(tmp_path, service):
    env = real_env(tmp_path, LINKSHOP_ADMIN_TOKEN="admin-x")
    s, _ = load_service(service, env)
    assert (s.admin_token, s.token_secret) == ("admin-x", None)
    for needs in ("delivery", "referral", "payout"):
        with pytest.raises(ConfigError, match="LINKSHOP_TOKEN_SECRET"):
            load_settings(needs, env)


def test_delivery_reads_the_previous_vault_keys(tmp_path):
    env = real_env(tmp_path, **REAL_SECRETS, LINKSHOP_VAULT_PREVIOUS_KEYS=" old-1-0123456789abcdef, ,old-2-0123456789abcdef ")
    _, config = load_service("delivery", env)
    assert config.vault_previous_keys == ("old-1-0123456789abcdef", "old-2-0123456789abcdef")


def test_embedded_generates_persists_and_reports_dev_secrets(tmp_path):
    env = {"LINKSHOP_VAR_DIR": str(tmp_path)}
    first, vault = load_service("delivery", env)
    assert first.embedded
    assert set(first.generated) | set(vault.generated) == set(GENERATED_SECRETS)
    assert len({first.admin_token, vault.vault_key, first.token_secret}) == 3
    assert all(len(v) >= 32 for v in (first.admin_token, vault.vault_key, first.token_secret))
    path = tmp_path / "dev-secrets.json"
    stored = json.loads(path.read_text())
    assert stored["LINKSHOP_ADMIN_TOKEN"] == first.admin_token
    assert stored["LINKSHOP_VAULT_KEY"] == vault.vault_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A restart (and every other service) reads the same values: the vault stays readable.
    again, again_vault = load_service("delivery", env)
    assert (again.admin_token, again_vault.vault_key, again.token_secret) == \
        (first.admin_token, vault.vault_key, first.token_secret)
    assert set(again.generated) | set(again_vault.generated) == set(GENERATED_SECRETS)  # still reported
    for svc in ("catalog", "referral", "payout", "risk"):
        other = load_settings(svc, env)
        assert other.admin_token == first.admin_token
        assert set(other.generated) == set(KERNEL_SECRETS[svc])
        assert other.token_secret == (first.token_secret if "LINKSHOP_TOKEN_SECRET" in KERNEL_SECRETS[svc] else None)
    assert first.sandbox_secret == "sandbox-secret"


def test_environment_wins_over_generated_values(tmp_path):
    env = {"LINKSHOP_VAR_DIR": str(tmp_path)}
    load_settings("catalog", env)  # dev secrets exist on disk now
    s, vault = load_service("delivery", {**env, "LINKSHOP_ADMIN_TOKEN": "from-env",
                                         "LINKSHOP_SANDBOX_SECRET": "sb"})
    assert s.admin_token == "from-env"
    assert "LINKSHOP_ADMIN_TOKEN" not in s.generated
    assert set(s.generated) | set(vault.generated) == {"LINKSHOP_VAULT_KEY", "LINKSHOP_TOKEN_SECRET"}
    assert s.sandbox_secret == "sb"
    every = load_settings("catalog", {**env, **REAL_SECRETS})
    assert every.generated == ()
    assert every.admin_token == "admin-x"


def test_database_url_precedence(tmp_path):
    base = {"LINKSHOP_VAR_DIR": str(tmp_path)}
    assert load_settings("payout", base).database_url == f"sqlite:///{tmp_path / 'payout.db'}"
    shared_url = {**base, "DATABASE_URL": "sqlite:///shared.db"}
    assert load_settings("payout", shared_url).database_url == "sqlite:///shared.db"
    own = {**shared_url, "PAYOUT_DATABASE_URL": "postgresql+psycopg://x/payout"}
    assert load_settings("payout", own).database_url == "postgresql+psycopg://x/payout"
    assert load_settings("risk", own).database_url == "sqlite:///shared.db"
    # One URL for every service, each in its own schema (docs/migrations.md); secrets not read.
    one = {"DATABASE_URL": "postgresql+psycopg://u@db/linkshop?options=-csearch_path%3D{service}"}
    assert database_url("risk", one) == "postgresql+psycopg://u@db/linkshop?options=-csearch_path%3Drisk"


def test_numeric_and_list_settings(tmp_path):
    s = load_settings("risk", {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_RETRY_DELAYS_MS": "0",
                               "BUS_MAX_ATTEMPTS": "3", "LINKSHOP_HOLD_SECONDS": "60",
                               "LINKSHOP_TRUSTED_PROXIES": " 10.0.0.1, ,10.0.0.2 ",
                               "LINKSHOP_SANDBOX_ENABLED": "false"})
    assert s.bus_retry_delays_ms == (0,)
    assert s.bus_max_attempts == 3
    assert s.hold_seconds == 60
    assert s.trusted_proxies == frozenset({"10.0.0.1", "10.0.0.2"})
    assert s.sandbox_secret is None
    d = load_settings("risk", {"LINKSHOP_VAR_DIR": str(tmp_path)})
    assert d.bus_retry_delays_ms == (1000, 5000, 30000, 120000)
    assert d.hold_seconds == 604800


def test_unknown_service_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        load_settings("billing", {"LINKSHOP_VAR_DIR": str(tmp_path)})
    assert "catalog" in SERVICES


def test_embedded_banner_says_whether_the_admin_token_is_a_dev_value(tmp_path):
    from services.embedded import banner, build_embedded

    generated = build_embedded({"LINKSHOP_VAR_DIR": str(tmp_path / "a")}, migrate=False)
    text = banner(generated, "http://127.0.0.1:8080")
    assert "http://127.0.0.1:8080" in text and "generated" in text
    assert generated.settings["catalog"].admin_token in text
    given = build_embedded({"LINKSHOP_VAR_DIR": str(tmp_path / "b"), **REAL_SECRETS}, migrate=False)
    text = banner(given, "http://127.0.0.1:8080")
    assert "from LINKSHOP_ADMIN_TOKEN" in text and "admin-x" not in text
    # Every service of one embedded system shares the same secrets.
    assert len({s.admin_token for s in given.settings.values()}) == 1
    # delivery's generated vault key is reported too, though no kernel setting carries it
    assert "LINKSHOP_VAULT_KEY" in banner(generated, "http://127.0.0.1:8080")
    stored = json.loads((tmp_path / "a" / "dev-secrets.json").read_text())
    assert generated.configs["delivery"].vault_key == stored["LINKSHOP_VAULT_KEY"]
    for system in (generated, given):
        for app in system.apps.values():
            app.extensions["linkshop"].db.dispose()


def test_one_postgresql_database_url_gives_each_service_its_schema():
    from sqlalchemy.engine import make_url

    plain = {"DATABASE_URL": "postgresql+psycopg://shop:pw@db:5432/linkshop"}
    assert make_url(database_url("risk", plain)).query == {"options": "-csearch_path=risk"}
    assert make_url(database_url("risk", plain)).password == "pw"
    with_options = {"DATABASE_URL": "postgresql+psycopg://db/linkshop?options=-cstatement_timeout%3D5000"}
    assert make_url(database_url("payout", with_options)).query == {
        "options": "-cstatement_timeout=5000 -csearch_path=payout"}
    named = {"DATABASE_URL": "postgresql+psycopg://db/linkshop?options=-csearch_path%3Dshop_{service}"}
    assert make_url(database_url("catalog", named)).query == {"options": "-csearch_path=shop_catalog"}
    own = {**plain, "DELIVERY_DATABASE_URL": "postgresql+psycopg://db/delivery"}
    assert database_url("delivery", own) == "postgresql+psycopg://db/delivery"
    # SQLite has no schemas: one file stays one file (migrate refuses it, with the reason)
    assert database_url("risk", {"DATABASE_URL": "sqlite:///one.db"}) == "sqlite:///one.db"
