"""Embedded mode: all five services in one process on one port, SQLite files under ./var and
the in-process bus. ``make run`` starts it; tests build it with ``build_embedded``."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from shared.bus import MemoryBus
from shared.config import ADMIN_TOKEN, GENERATED_SECRETS, SERVICES, load_settings
from shared.worker import EmbeddedHub, retention_job
from web.app import create_app as create_storefront

log = logging.getLogger("linkshop.embedded")


class PrefixDispatcher:
    """Routes by the first path segment (``/delivery/...``) to that service's app, unchanged;
    any other path (``/``, ``/product/...``, ``/static/...``) to ``default``, the storefront."""

    def __init__(self, apps: dict, default=None):
        # /metrics is the process's one registry, which every service app exposes: catalog's.
        self.apps = {**apps, "metrics": apps["catalog"]}
        self.default = default if default is not None else apps["catalog"]

    def __call__(self, environ, start_response):
        first = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        return self.apps.get(first, self.default)(environ, start_response)


@dataclass
class Embedded:
    apps: dict
    hub: EmbeddedHub
    bus: MemoryBus
    wsgi: PrefixDispatcher
    settings: dict
    configs: dict = field(default_factory=dict)  # a service's own settings, where it has a config module
    web: Any = None  # the storefront (web/), at / ; not in ``apps``: it is no service and has no data

    @property
    def generated(self) -> tuple[str, ...]:
        """Every dev secret any service was given instead of one from the environment."""
        names = {n for s in self.settings.values() for n in s.generated}
        names |= {n for c in self.configs.values() for n in getattr(c, "generated", ())}
        return tuple(n for n in GENERATED_SECRETS if n in names)


def build_embedded(env: dict | None = None, migrate: bool = True, bind_database=None) -> Embedded:
    """``migrate=False`` creates the tables straight from the models (fresh test databases);
    a test checks that the migrations produce the same schema. ``bind_database``, tests only
    (tests/kit): called with each service's name and ``Database`` as soon as it is opened,
    instead of creating its tables (the kit's PostgreSQL databases are migrated once)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("BUS_URL", "memory://")
    settings = {svc: load_settings(svc, env) for svc in SERVICES}
    first = settings["catalog"]
    bus = MemoryBus(first.bus_retry_delays_ms, first.bus_max_attempts)
    apps, specs, configs = {}, [], {}
    for svc in SERVICES:
        app_module = importlib.import_module(f"services.{svc}.app")
        worker_module = importlib.import_module(f"services.{svc}.worker")
        db = app_module.open_database(settings[svc])
        if bind_database is not None:
            bind_database(svc, db)
        elif migrate:
            from services.manage import upgrade
            upgrade(svc, settings[svc].database_url)
        else:
            db.create_all()
        extra = {}
        if importlib.util.find_spec(f"services.{svc}.config") is not None:
            # A service's own settings come from the same environment as everyone's, never
            # from os.environ behind the caller's back (tests pass their own).
            extra["config"] = importlib.import_module(f"services.{svc}.config").load_config(settings[svc], env)
            configs[svc] = extra["config"]
        apps[svc] = app_module.create_app(settings[svc], db=db, bus=bus, **extra)
        spec = worker_module.build_worker(settings[svc], db=db, **extra)
        spec.jobs.append(retention_job(spec, settings[svc]))
        specs.append(spec)
    hub = EmbeddedHub(specs, bus)
    storefront = create_storefront()
    return Embedded(apps=apps, hub=hub, bus=bus, wsgi=PrefixDispatcher(apps, default=storefront),
                    settings=settings, configs=configs, web=storefront)


def banner(embedded: Embedded, url: str) -> str:
    s = embedded.settings["catalog"]
    lines = [f"Linkshop (embedded) on {url}", f"  storefront: {url}/  (order lookup: {url}/lookup)",
             f"  data: {os.path.dirname(s.database_url.removeprefix('sqlite:///')) or '.'}/*.db, bus: in-process"]
    if embedded.generated:
        lines += ["", "  !!! DEV SECRETS: " + ", ".join(embedded.generated) + " were generated for this machine",
                  "  !!! (kept in var/dev-secrets.json). Never use them in production."]
    if ADMIN_TOKEN in s.generated:
        lines.append(f"  admin token (generated dev value): {s.admin_token}")
    else:
        lines.append("  admin token: from LINKSHOP_ADMIN_TOKEN")
    if s.sandbox_secret == "sandbox-secret":
        lines.append("  sandbox payments: signed with the dev default 'sandbox-secret'")
    return "\n".join(lines)


def _access_log_handler():
    from werkzeug.serving import WSGIRequestHandler

    class AccessLog(WSGIRequestHandler):
        """Logs the path without its query string: order links carry the buyer's access token."""

        def log_request(self, code="-", size="-"):
            path = self.path.split("?", 1)[0]
            log.info("%s %s %s %s", self.address_string(), self.command, path, code)

    return AccessLog


def main() -> int:
    from werkzeug.serving import run_simple

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", 8080))
    embedded = build_embedded()
    embedded.hub.start()
    print(banner(embedded, f"http://{host}:{port}"), file=sys.stderr, flush=True)
    run_simple(host, port, embedded.wsgi, threaded=True, use_reloader=False, request_handler=_access_log_handler())
    embedded.hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
