"""The test kit's fixtures, loaded for every test by the root conftest.py.

``backend`` is where the embedded system keeps its data (``tests.kit.backends``); ``env``,
``embedded``, ``catalog``, ``merchant``, ``product``, ``admin_token`` and ``admin_headers``
build on it. A service's tests add their ``shop`` fixture (a ``tests.kit`` shop) in their
own conftest.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from .backends import (PostgresBackend, PostgresCluster, SQLiteBackend, fold_skip, postgres_unreachable,
                       require_server)
from .helpers import create_merchant, create_product

BACKENDS = ("sqlite", "postgresql")
_SKIP_PREFIX = "tests.kit: "


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(reason): runs on the SQLite backend only (it reads SQLite's "
                                       "files, or tests what only embedded mode does)")
    config.addinivalue_line("markers", "commits: on PostgreSQL, commits for real (threads, each on its own "
                                       "connection) instead of running in one rolled-back transaction; every "
                                       "service table is truncated afterwards")
    config.addinivalue_line("markers", "xfail_postgresql(reason): fails on PostgreSQL for a known reason in the "
                                       "code (strict: a pass is reported)")


def pytest_collection_modifyitems(items):
    for item in items:
        mark = item.get_closest_marker("xfail_postgresql")
        callspec = getattr(item, "callspec", None)
        if mark and callspec and callspec.params.get("backend") == "postgresql":
            item.add_marker(pytest.mark.xfail(strict=True, reason=mark.args[0]))


def pytest_generate_tests(metafunc):
    """A service's test (services/<svc>/tests) that builds on ``backend`` runs once per
    backend, ``[sqlite]`` and ``[postgresql]``; anywhere else on SQLite."""
    if "backend" not in metafunc.fixturenames:
        return
    services = Path(metafunc.config.rootpath) / "services"
    if not Path(metafunc.definition.path).is_relative_to(services):
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    metafunc.parametrize("backend", ["sqlite"] if only else list(BACKENDS), indirect=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every test skipped for want of PostgreSQL reports the same place, so `-ra` prints one line."""
    outcome = yield
    fold_skip(outcome.get_result(), _SKIP_PREFIX, __file__, _SKIP_LINE)


@pytest.fixture(scope="session")
def postgres_cluster():
    """This session's PostgreSQL databases (tests.kit.backends.PostgresCluster). Unreachable:
    the PostgreSQL half of the suite is skipped, except under CI=true, where it fails."""
    require_server(_SKIP_PREFIX, postgres_unreachable(), "PostgreSQL")
    cluster = PostgresCluster()
    yield cluster
    cluster.drop()


_SKIP_LINE = next(n for n, line in enumerate(Path(__file__).read_text().splitlines(), 1)
                  if line.startswith("def postgres_cluster"))


@pytest.fixture
def backend(request):
    """The backend of this test's embedded systems (tests.kit.backends)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        b = PostgresBackend(request.getfixturevalue("postgres_cluster"),
                            commits=request.node.get_closest_marker("commits") is not None)
    else:
        b = SQLiteBackend()
    yield b
    b.close()


@pytest.fixture
def env(backend, tmp_path) -> dict[str, str]:
    return backend.env(tmp_path)


@pytest.fixture
def embedded(backend, env):
    """All five services in-process: ``.apps``, ``.hub`` (``hub.drain()``), ``.bus``, ``.settings``."""
    return backend.build(env)


@pytest.fixture
def admin_token(embedded) -> str:
    return embedded.settings["catalog"].admin_token


@pytest.fixture
def admin_headers(admin_token) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def catalog(embedded):
    """A test client on the catalog app, carrying the admin token as ``.admin_token``."""
    client = embedded.apps["catalog"].test_client()
    client.admin_token = embedded.settings["catalog"].admin_token
    return client


@pytest.fixture
def merchant(catalog) -> dict:
    return create_merchant(catalog)


@pytest.fixture
def product(catalog, merchant) -> dict:
    return create_product(catalog, merchant["api_key"])

