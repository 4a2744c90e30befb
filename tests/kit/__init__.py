"""The shared test kit: the builders and helpers every service's tests use.

- ``tests.kit.helpers``: environment, HTTP and event helpers on an embedded system
  (``create_merchant``, ``create_product``, ``assert_error``, ``bearer``, ``envelope``,
  ``inject``, ``outbox_events`` ...).
- ``tests.kit.shops``: ``Shop``, ``ReferralShop``, ``PayoutShop``, ``RiskShop`` and risk's
  clock ``at``.
- ``tests.kit.backends``: where an embedded system keeps its data.
- ``tests.kit.plugin``: the fixtures (``backend``, ``env``, ``embedded``, ``catalog``,
  ``merchant``, ``product`` ...), loaded for every test by the root conftest.py.

A service's tests import from here, never from another service's tests or a service's worker.
"""
from .backends import SQLiteBackend, sqlite_backend
from .helpers import (assert_error, bearer, by_hand, create_merchant, create_product, embedded_env, envelope,
                      event_payloads, inject, job_names, outbox_events, payout_clock, service_ctx, service_db,
                      stock_as_of)
from .shops import DAY, SANDBOX_SECRET, T0, PayoutShop, ReferralShop, RiskShop, Shop, at, shop_maker

__all__ = [
    "SQLiteBackend", "sqlite_backend",
    "assert_error", "bearer", "by_hand", "create_merchant", "create_product", "embedded_env", "envelope", "event_payloads",
    "inject", "job_names", "outbox_events", "payout_clock", "service_ctx", "service_db", "stock_as_of",
    "DAY", "SANDBOX_SECRET", "T0", "PayoutShop", "ReferralShop", "RiskShop", "Shop", "at", "shop_maker",
]
