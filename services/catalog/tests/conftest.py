"""The shared fixtures of tests/conftest.py, for catalog's own tests."""
from tests.conftest import (admin_headers, admin_token, catalog, embedded, env, merchant,  # noqa: F401
                            product)
