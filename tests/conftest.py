"""The fixtures of the fast tests (``embedded``, ``catalog``, ``merchant``, ``backend`` ...)
come from the shared test kit, tests/kit/plugin.py, loaded for every test by the root
conftest.py; the helpers are imported from ``tests.kit``.

The names below are kept for code written before the kit existed; import them from
``tests.kit``."""
from tests.kit.helpers import (assert_error, bearer, create_merchant, create_product, embedded_env,  # noqa: F401
                               envelope, inject, outbox_events, service_ctx, service_db, stock_as_of)
