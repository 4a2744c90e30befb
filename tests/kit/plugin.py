"""The test kit's fixtures, loaded for every test by the root conftest.py.

``backend`` is where the embedded system keeps its data (``tests.kit.backends``); ``env``,
``embedded``, ``catalog``, ``merchant``, ``product``, ``admin_token`` and ``admin_headers``
build on it. A service's tests add their ``shop`` fixture (a ``tests.kit`` shop) in their
own conftest.py."""
from __future__ import annotations

import pytest

from .backends import SQLiteBackend
from .helpers import create_merchant, create_product


@pytest.fixture
def backend(request):
    """The backend of this test's embedded systems."""
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

