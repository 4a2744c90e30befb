"""Operator commands: ``python -m services.manage migrate [service ...]``.

Real-mode services never create their tables themselves; this (or the Kubernetes Job that
runs it) does, once, before they start.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.config import SERVICES, database_url, load_settings


def migrations_dir(service: str) -> Path:
    """A service's Alembic directory: services/<svc>/migrations (docs/migrations.md)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return Path(__file__).parent / service / "migrations"


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Brings one service's database (its own version table) to ``revision``."""
    from shared.migrations import upgrade as alembic_upgrade
    alembic_upgrade(service, url, revision, migrations=migrations_dir(service))


def migrate(services: list[str]) -> None:
    """Only the database URLs are read: migrating needs no secret and no bus."""
    from sqlalchemy.engine import make_url

    urls = {service: database_url(service) for service in services}
    shared = [s for s in services if list(urls.values()).count(urls[s]) > 1]
    if shared:
        # Their tables share names (merchants, products, orders, outbox, inbox...): one
        # database is fine, one namespace is not (docs/migrations.md#one-database). A plain
        # PostgreSQL DATABASE_URL never lands here: database_url gives each service a schema.
        raise SystemExit(f"{', '.join(shared)} have the same database URL; give each service its own "
                         "database (SQLite: sqlite:///var/{service}.db) or, on PostgreSQL, its own schema "
                         "(one plain DATABASE_URL does that), see docs/migrations.md")
    for service in services:
        url = urls[service]
        upgrade(service, url)
        print(f"{service}: schema at head ({make_url(url).render_as_string(hide_password=True)})")


def revision(service: str, message: str, autogenerate: bool = False) -> Path:
    """Writes services/<svc>/migrations/versions/<NNNN>_<slug>.py, the next number of that
    service's history. ``autogenerate`` compares the models with the history's head, built in
    a scratch SQLite database (docs/migrations.md)."""
    import tempfile

    from alembic import command

    from shared.migrations import alembic_config
    directory = migrations_dir(service)
    numbers = [int(p.name[:4]) for p in (directory / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory(prefix=f"linkshop-{service}-revision-") as tmp:
        url = f"sqlite:///{tmp}/{service}.db"
        upgrade(service, url)
        script = command.revision(alembic_config(service, url, migrations=directory), message=message,
                                  autogenerate=autogenerate, rev_id=rev_id)
    path = Path(script.path)
    print(f"{service}: wrote {path} (review it: autogenerate misses renames, data and server defaults)")
    return path


def rotate_vault() -> None:
    """Re-seal every card key under the current LINKSHOP_VAULT_KEY, in batches."""
    from services.delivery import domain
    from services.delivery.app import open_database
    from services.delivery.config import load_config
    from services.delivery.vault import Vault

    settings = load_settings("delivery")
    config = load_config(settings)
    vault, db = Vault(config.vault_key, config.vault_previous_keys), open_database(settings)
    total = 0
    while True:
        with db.write() as session:
            done = domain.rotate_vault(session, vault)
        total += done
        if not done:
            break
    db.dispose()
    print(f"delivery: {total} keys re-sealed under the current vault key")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.manage")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("migrate", help="create or upgrade each service's schema")
    cmd.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(SERVICES))
    rev = sub.add_parser("revision", help="write a service's next Alembic revision (docs/migrations.md)")
    rev.add_argument("service", choices=SERVICES)
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true", help="compare the models with the history's head")
    sub.add_parser("rotate-vault", help="re-seal card keys under the current LINKSHOP_VAULT_KEY")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate(args.services or list(SERVICES))
    elif args.command == "revision":
        revision(args.service, args.message, args.autogenerate)
    elif args.command == "rotate-vault":
        rotate_vault()
    return 0


if __name__ == "__main__":
    sys.exit(main())
