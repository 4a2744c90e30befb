"""Operator commands: ``python -m services.manage migrate [service ...]``.

Real-mode services never create their tables themselves; this (or the Kubernetes Job that
runs it) does, once, before they start.
"""
from __future__ import annotations

import argparse
import sys

from shared.config import SERVICES, load_settings


def migrate(services: list[str]) -> None:
    from sqlalchemy.engine import make_url

    from shared.migrations import upgrade
    for service in services:
        url = load_settings(service).database_url
        upgrade(service, url)
        print(f"{service}: schema at head ({make_url(url).render_as_string(hide_password=True)})")


def rotate_vault() -> None:
    """Re-seal every card key under the current LINKSHOP_VAULT_KEY, in batches."""
    from services.delivery import domain
    from services.delivery.app import open_database
    from services.delivery.vault import Vault

    settings = load_settings("delivery")
    vault, db = Vault(settings.vault_key, settings.vault_previous_keys), open_database(settings)
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
    sub.add_parser("rotate-vault", help="re-seal card keys under the current LINKSHOP_VAULT_KEY")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        migrate(args.services or list(SERVICES))
    elif args.command == "rotate-vault":
        rotate_vault()
    return 0


if __name__ == "__main__":
    sys.exit(main())
