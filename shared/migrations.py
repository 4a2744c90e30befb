"""Alembic, one history per service. Real-mode services never create their own tables:
``python -m services.manage migrate`` (or its Kubernetes Job) does.

The kernel knows no service: the caller passes the service's name and its ``migrations``
directory (services/<svc>/migrations). Each service records its revision in its own version
table, ``alembic_version_<service>``, so several histories can share a database without
reading one another's revision (docs/migrations.md).
"""
from __future__ import annotations

import logging
import os
import re

from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, inspect, pool, text

log = logging.getLogger(__name__)

LEGACY_VERSION_TABLE = "alembic_version"  # every service's table until each had its own


def version_table(service: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", service):
        raise ValueError(f"not a service name: {service!r}")
    return f"{LEGACY_VERSION_TABLE}_{service}"


def alembic_config(service: str, database_url: str, *, migrations: str | os.PathLike) -> Config:
    """``migrations``: the service's Alembic directory (env.py, versions/)."""
    config = Config()
    config.set_main_option("script_location", os.fspath(migrations))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.set_main_option("version_table", version_table(service))
    return config


def upgrade(service: str, database_url: str, revision: str = "head", *, migrations: str | os.PathLike) -> None:
    command.upgrade(alembic_config(service, database_url, migrations=migrations), revision)


def _render_item(type_, obj, autogen_context):
    # Migrations stand on plain SQLAlchemy types, not on the kernel's Python-side wrappers.
    from .db import UtcDateTime
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _create_search_path_schema(url: str) -> None:
    """PostgreSQL: when the URL names a schema (``?options=-csearch_path%3D<schema>``, one
    database shared by several services) that does not exist yet, create it, so the service's
    tables and version table land there and not in ``public``. A fresh engine follows: the
    dialect reads its default schema once, on its first connection."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            if connection.execute(text("SELECT current_schema()")).scalar() is None:
                first = connection.execute(text("SHOW search_path")).scalar().split(",")[0].strip().strip('"')
                if first and not first.startswith("$"):
                    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{first}"'))
    finally:
        engine.dispose()


def _adopt_legacy_revision(connection, script: ScriptDirectory, metadata, table: str):
    """The revision to stamp into ``table`` for a database migrated before each service had
    its own version table, or None.

    Adopted only when the service's own table is missing, the shared ``alembic_version``
    holds a revision of THIS history (revision ids such as ``0003`` repeat across services,
    so the id alone proves nothing) and the database holds this service's tables and no
    other service's: then it is this service's own database. ``alembic_version`` is left as
    it was (a release rolled back to still finds it)."""
    tables = set(inspect(connection).get_table_names())
    if table in tables or LEGACY_VERSION_TABLE not in tables:
        return None
    revisions = [row[0] for row in connection.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}"))]
    if len(revisions) != 1:
        return None
    try:
        if script.get_revision(revisions[0]) is None:
            return None
    except CommandError:
        return None
    ours = set(metadata.tables)
    data = {t for t in tables if not t.startswith(LEGACY_VERSION_TABLE)}
    if not data or not data <= ours:
        return None
    return revisions[0]


def _include_name(name, type_, parent_names) -> bool:
    # Autogenerate leaves every version table alone: its own, the legacy one, and those of
    # the other services sharing the database.
    return not (type_ == "table" and name and name.startswith(LEGACY_VERSION_TABLE))


def run_env(metadata) -> None:
    """The body of every service's migrations/env.py."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    table = config.get_main_option("version_table")
    if not table:
        raise CommandError("run migrations through shared.migrations.upgrade (python -m services.manage "
                           "migrate), which names the service's version table")
    options = dict(target_metadata=metadata, compare_type=True, render_item=_render_item,
                   render_as_batch=url.startswith("sqlite"), version_table=table,
                   include_name=_include_name)
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    if url.startswith("postgresql"):
        _create_search_path_schema(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            adopted = _adopt_legacy_revision(connection, context.script, metadata, table)
            if adopted:
                log.warning("adopting revision %s from %s into %s", adopted, LEGACY_VERSION_TABLE, table)
                context.get_context().stamp(context.script, adopted)
            context.run_migrations()
    engine.dispose()
