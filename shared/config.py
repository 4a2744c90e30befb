"""Configuration from the environment (design.md §9).

Embedded mode (no BUS_URL or ``memory://``) may generate dev secrets; they are kept in
``var/dev-secrets.json`` so a restart can still decrypt the vault, and reported loudly.
Real mode refuses to start without them.

Each service reads only the secrets it uses: the kernel's ``Settings`` carries the admin token
(every service guards operator routes) and the user-token secret (only where user tokens are
issued or checked, ``KERNEL_SECRETS``); a service's own secrets, such as delivery's vault key,
are read by its own config module with ``secret()``.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("catalog", "delivery", "referral", "payout", "risk")
SERVICE_PORTS = {"catalog": 8081, "delivery": 8082, "referral": 8083, "payout": 8084, "risk": 8085}
ADMIN_TOKEN, VAULT_KEY, TOKEN_SECRET = "LINKSHOP_ADMIN_TOKEN", "LINKSHOP_VAULT_KEY", "LINKSHOP_TOKEN_SECRET"
# Every dev secret embedded mode may generate (kept together in var/dev-secrets.json).
GENERATED_SECRETS = (ADMIN_TOKEN, VAULT_KEY, TOKEN_SECRET)
# The kernel's secrets each service needs: the admin token guards every service's operator
# routes; user tokens are issued by referral and checked by delivery and payout. Catalog and
# risk never see a user token, so they neither read nor require its secret.
KERNEL_SECRETS = {
    "catalog": (ADMIN_TOKEN,),
    "delivery": (ADMIN_TOKEN, TOKEN_SECRET),
    "referral": (ADMIN_TOKEN, TOKEN_SECRET),
    "payout": (ADMIN_TOKEN, TOKEN_SECRET),
    "risk": (ADMIN_TOKEN,),
}


class ConfigError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    service: str
    database_url: str
    bus_url: str
    admin_token: str
    token_secret: str | None  # None where the service checks no user token (KERNEL_SECRETS)
    sandbox_secret: str | None
    hold_seconds: int
    refund_window_seconds: int
    reservation_seconds: int
    trusted_proxies: frozenset[str]
    public_url: str
    bus_retry_delays_ms: tuple[int, ...]
    bus_max_attempts: int
    relay_interval_s: float
    stock_sync_interval_s: float
    stock_low_floor: int
    lookup_rate_per_minute: int
    risk_required: bool
    outbox_retention_s: float = 86400.0
    inbox_retention_s: float = 7 * 86400.0
    generated: tuple[str, ...] = field(default=())

    @property
    def embedded(self) -> bool:
        return self.bus_url.startswith("memory://")


def _var_dir(env) -> Path:
    path = Path(env.get("LINKSHOP_VAR_DIR", "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dev_secrets(env) -> dict[str, str]:
    """Dev secrets for embedded mode, made once and reused so the vault stays readable."""
    path = _var_dir(env) / "dev-secrets.json"
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        stored = {}
    changed = False
    for name in GENERATED_SECRETS:
        if name not in stored:
            stored[name] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
    return stored


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(part) for part in raw.split(",") if part.strip())


def database_url(service: str, env: os._Environ | dict | None = None) -> str:
    """The service's database: ``<SVC>_DATABASE_URL``, else ``DATABASE_URL`` (where
    ``{service}`` stands for the service's name, e.g. its PostgreSQL schema), else SQLite in
    the var directory. Read alone by ``services.manage migrate``, which needs no secret."""
    env = os.environ if env is None else env
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}")
    url = env.get(f"{service.upper()}_DATABASE_URL")
    if url:
        return url
    url = env.get("DATABASE_URL")
    if url:
        # One URL for every service: ``{service}`` names each one's schema or file; a
        # PostgreSQL URL without it gets a schema per service (their tables share names).
        if "{service}" in url:
            return url.replace("{service}", service)
        return _schema_per_service(url, service) if url.startswith("postgresql") else url
    return f"sqlite:///{_var_dir(env) / (service + '.db')}"


def _schema_per_service(url: str, service: str) -> str:
    """``url`` with the service's schema first on its ``search_path`` (created by migrate)."""
    from sqlalchemy.engine import make_url
    parsed = make_url(url)
    options = parsed.query.get("options")
    options = " ".join(filter(None, [options if isinstance(options, str) else None, f"-csearch_path={service}"]))
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def is_embedded(env) -> bool:
    return env.get("BUS_URL", "memory://").startswith("memory://")


def secret(name: str, env, generated: list[str] | None = None) -> str:
    """A required secret from the environment. Real mode refuses to start without it;
    embedded mode falls back to this machine's dev value, and appends ``name`` to
    ``generated`` so the caller can say so."""
    value = env.get(name)
    if value:
        return value
    if not is_embedded(env):
        bus_url = env.get("BUS_URL", "")
        raise ConfigError(f"{name} must be set in real mode (BUS_URL={bus_url.split('@')[-1]})")
    if generated is not None:
        generated.append(name)
    return _dev_secrets(env)[name]


def settings_group(env, prefix: str, names: tuple[str, ...]) -> dict[str, str] | None:
    """Settings that only work together (a payment provider's), all or none: None when none
    is set, ``ConfigError`` naming the missing ones when only some are (half a provider would
    take payments it cannot verify, or sign what the provider refuses)."""
    values = {n: (env.get(f"{prefix}{n}") or "").strip() for n in names}
    present = [n for n, v in values.items() if v]
    if not present:
        return None
    if len(present) != len(names):
        missing = [f"{prefix}{n}" for n in names if not values[n]]
        raise ConfigError(f"{', '.join(missing)} must be set too, or none of {prefix}*")
    return values


def load_settings(service: str, env: os._Environ | dict | None = None) -> Settings:
    env = os.environ if env is None else env
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}")
    bus_url = env.get("BUS_URL", "memory://")
    embedded = is_embedded(env)
    url = database_url(service, env)
    generated: list[str] = []
    values = {name: secret(name, env, generated) for name in KERNEL_SECRETS[service]}
    sandbox_secret = env.get("LINKSHOP_SANDBOX_SECRET") or ("sandbox-secret" if embedded else None)
    if env.get("LINKSHOP_SANDBOX_ENABLED", "true").lower() in ("0", "false", "no"):
        sandbox_secret = None
    port = SERVICE_PORTS[service]
    return Settings(
        service=service,
        database_url=url,
        bus_url=bus_url,
        admin_token=values[ADMIN_TOKEN],
        token_secret=values.get(TOKEN_SECRET),
        sandbox_secret=sandbox_secret,
        hold_seconds=int(env.get("LINKSHOP_HOLD_SECONDS", 604800)),
        refund_window_seconds=int(env.get("LINKSHOP_REFUND_WINDOW_SECONDS") or env.get("LINKSHOP_HOLD_SECONDS", 604800)),
        reservation_seconds=int(env.get("LINKSHOP_RESERVATION_SECONDS", 900)),
        trusted_proxies=frozenset(p.strip() for p in env.get("LINKSHOP_TRUSTED_PROXIES", "").split(",") if p.strip()),
        public_url=env.get("LINKSHOP_PUBLIC_URL", "http://127.0.0.1:8080" if embedded else f"http://127.0.0.1:{port}"),
        bus_retry_delays_ms=_ints(env.get("BUS_RETRY_DELAYS_MS", "1000,5000,30000,120000")),
        bus_max_attempts=int(env.get("BUS_MAX_ATTEMPTS", 12)),
        relay_interval_s=float(env.get("LINKSHOP_RELAY_INTERVAL_S", 0.05)),
        stock_sync_interval_s=float(env.get("LINKSHOP_STOCK_SYNC_INTERVAL_S", 1.0)),
        stock_low_floor=int(env.get("LINKSHOP_STOCK_LOW_FLOOR", 10)),
        lookup_rate_per_minute=int(env.get("LINKSHOP_LOOKUP_RATE_PER_MINUTE", 10)),
        risk_required=env.get("LINKSHOP_RISK_REQUIRED", "true").lower() in ("1", "true", "yes"),
        outbox_retention_s=float(env.get("LINKSHOP_OUTBOX_RETENTION_S", 86400)),
        inbox_retention_s=float(env.get("LINKSHOP_INBOX_RETENTION_S", 7 * 86400)),
        generated=tuple(generated),
    )
