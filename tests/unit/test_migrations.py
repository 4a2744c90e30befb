"""Each service's Alembic history must build exactly the schema its models describe, so
real mode (which only ever migrates) and the tests (which create from models) agree."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
import importlib

from shared.config import SERVICES
from shared.migrations import upgrade


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_match_models(service, tmp_path):
    url = f"sqlite:///{tmp_path / service}.db"
    upgrade(service, url)
    upgrade(service, url)  # idempotent
    metadata = importlib.import_module(f"services.{service}.models").Base.metadata
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), metadata)
    engine.dispose()
    assert diff == [], f"{service}: models changed without a migration: {diff}"
