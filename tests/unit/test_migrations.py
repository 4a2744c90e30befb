"""Each service's Alembic history must build exactly the schema its models describe, so
real mode (which only ever migrates) and the tests (which create from models) agree.

Each history keeps its revision in its own version table (``alembic_version_<service>``):
several services can share one database (each in its own PostgreSQL schema), and a database
migrated when every service used the plain ``alembic_version`` table is adopted, never
migrated again from scratch (docs/migrations.md)."""
import importlib
import os
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from services.manage import main as manage_main
from services.manage import migrations_dir, upgrade
from shared.config import SERVICES
from shared.migrations import alembic_config, version_table

PG_ADMIN_URL = os.environ.get("LINKSHOP_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def metadata_of(service):
    return importlib.import_module(f"services.{service}.models").Base.metadata


def head_of(service):
    return ScriptDirectory(str(migrations_dir(service))).get_current_head()


def schema_diff(conn, service, schema=None):
    opts = {"compare_type": False, "version_table": version_table(service),
            "include_name": lambda name, type_, parents: not (type_ == "table" and name.startswith("alembic_version"))}
    if schema:
        conn.execute(text(f'SET search_path TO "{schema}"'))
    return compare_metadata(MigrationContext.configure(conn, opts=opts), metadata_of(service))


def versions(conn, table):
    return [row[0] for row in conn.execute(text(f"SELECT version_num FROM {table}"))]


def legacy_upgrade(service, url, revision="head"):
    """Migrates the way every service did before each had its own version table."""
    config = alembic_config(service, url, migrations=migrations_dir(service))
    config.set_main_option("version_table", "alembic_version")
    command.upgrade(config, revision)


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_models(service, tmp_path):
    url = f"sqlite:///{tmp_path / service}.db"
    upgrade(service, url)
    upgrade(service, url)  # idempotent
    metadata = metadata_of(service)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False,
                                                                       "version_table": version_table(service)}),
                                metadata)
        tables = set(inspect(conn).get_table_names())
        assert versions(conn, version_table(service)) == [head_of(service)]
    engine.dispose()
    assert diff == [], f"{service}: models changed without a migration: {diff}"
    assert tables == set(metadata.tables) | {version_table(service)}, "no plain alembic_version any more"


@pytest.mark.parametrize("service", SERVICES)
def test_a_database_migrated_with_the_plain_version_table_is_adopted(service, tmp_path):
    url = f"sqlite:///{tmp_path / service}.db"
    legacy_upgrade(service, url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:  # data the adoption must keep
        before = set(inspect(conn).get_table_names())
    upgrade(service, url)  # adopts 0001, then runs the later revisions (tables exist: no re-create)
    upgrade(service, url)
    with engine.connect() as conn:
        assert versions(conn, version_table(service)) == [head_of(service)]
        assert versions(conn, "alembic_version") == ["0001"]  # left alone, for a rolled-back release
        assert schema_diff(conn, service) == []
        assert before <= set(inspect(conn).get_table_names())
    engine.dispose()


def test_another_services_revision_in_the_plain_table_is_not_adopted(tmp_path):
    """Revision ids repeat across histories (every service has a 0001): the id alone does not
    make a database delivery's. Here catalog's legacy database is not delivery's to adopt."""
    from shared.migrations import _adopt_legacy_revision

    url = f"sqlite:///{tmp_path / 'catalog'}.db"
    legacy_upgrade("catalog", url)
    engine = create_engine(url)
    with engine.connect() as conn:
        for other in ("delivery", "referral", "risk"):
            script = ScriptDirectory(str(migrations_dir(other)))
            assert _adopt_legacy_revision(conn, script, metadata_of(other), version_table(other)) is None, other
        script = ScriptDirectory(str(migrations_dir("catalog")))
        assert _adopt_legacy_revision(conn, script, metadata_of("catalog"), version_table("catalog")) \
            == script.get_current_head()
    engine.dispose()


def test_one_url_for_every_service_is_refused_with_a_reason(tmp_path, monkeypatch, capsys):
    """Their tables share names (merchants, products, orders, outbox...): one SQLite file
    cannot hold two services. Refused before anything is created, not half-way through."""
    one = tmp_path / "one.db"
    for svc in SERVICES:
        monkeypatch.delenv(f"{svc.upper()}_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{one}")
    with pytest.raises(SystemExit) as info:
        manage_main(["migrate"])
    assert "same database URL" in str(info.value) and "docs/migrations.md" in str(info.value)
    assert not one.exists()


def test_one_url_with_the_service_placeholder_migrates_every_service(tmp_path, monkeypatch):
    for svc in SERVICES:
        monkeypatch.delenv(f"{svc.upper()}_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/{{service}}.db")
    manage_main(["migrate"])
    manage_main(["migrate"])  # idempotent
    for svc in SERVICES:
        engine = create_engine(f"sqlite:///{tmp_path / svc}.db")
        with engine.connect() as conn:
            assert versions(conn, version_table(svc)) == [head_of(svc)]
            assert schema_diff(conn, svc) == []
        engine.dispose()


# -- one PostgreSQL database for all five services, each in its own schema ------------------

@pytest.fixture
def pg_database():
    """A throwaway database on the local PostgreSQL, dropped afterwards."""
    try:
        import psycopg
        admin = make_url(PG_ADMIN_URL)
        conninfo = dict(host=admin.host or "127.0.0.1", port=admin.port or 5432, user=admin.username or "postgres",
                        dbname=admin.database or "postgres", connect_timeout=3)
        if admin.password:
            conninfo["password"] = admin.password
        conn = psycopg.connect(**conninfo, autocommit=True)
    except Exception as exc:  # noqa: BLE001 - any reason PostgreSQL is not there
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL unreachable at {admin.host}:{admin.port} in CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    name = f"linkshop_migtest_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.mark.parametrize("query", ["?options=-csearch_path%3D{service}", ""], ids=["placeholder", "plain"])
def test_every_service_in_one_postgresql_database(pg_database, monkeypatch, query):
    """The README's single ``DATABASE_URL``: with ``{service}`` naming the schema, or plain,
    where each service gets the schema of its name."""
    for svc in SERVICES:
        monkeypatch.delenv(f"{svc.upper()}_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", pg_database + query)
    manage_main(["migrate"])
    manage_main(["migrate"])  # idempotent
    engine = create_engine(pg_database)
    with engine.connect() as conn:
        inspector = inspect(conn)
        assert not inspector.get_table_names(schema="public"), "nothing lands in public"
        for svc in SERVICES:
            tables = set(inspector.get_table_names(schema=svc))
            assert tables == set(metadata_of(svc).tables) | {version_table(svc)}, svc
            assert versions(conn, f'"{svc}".{version_table(svc)}') == [head_of(svc)]
            assert schema_diff(conn, svc, schema=svc) == [], svc
    engine.dispose()


def test_a_legacy_postgresql_database_is_adopted(pg_database):
    """A service's own database migrated before this change (public schema, plain table)."""
    legacy_upgrade("delivery", pg_database, "0002")
    upgrade("delivery", pg_database)
    upgrade("delivery", pg_database)
    engine = create_engine(pg_database)
    with engine.connect() as conn:
        assert versions(conn, version_table("delivery")) == [head_of("delivery")]
        assert versions(conn, "alembic_version") == ["0002"]
        assert schema_diff(conn, "delivery") == []
    engine.dispose()


def test_a_new_revision_is_the_next_number_of_its_own_history(tmp_path, monkeypatch):
    """``python -m services.manage revision <svc> -m ... --autogenerate`` (docs/migrations.md),
    here on a copy of catalog's history: models unchanged, so an empty revision."""
    import shutil

    import services.manage as manage

    copy = tmp_path / "migrations"
    shutil.copytree(migrations_dir("catalog"), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(manage, "migrations_dir", lambda service: copy)
    head = ScriptDirectory(str(copy)).get_current_head()
    new = f"{int(head) + 1:04d}"
    manage_main(["revision", "catalog", "-m", "nothing yet", "--autogenerate"])
    (path,) = [p for p in (copy / "versions").glob(f"{new}_*.py")]
    source = path.read_text()
    assert path.name == f"{new}_nothing_yet.py"
    assert f"revision = '{new}'" in source and f"down_revision = '{head}'" in source
    assert "alembic_version" not in source, "autogenerate leaves every version table alone"
    url = f"sqlite:///{tmp_path / 'catalog'}.db"
    manage.upgrade("catalog", url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert versions(conn, version_table("catalog")) == [new]
    engine.dispose()
