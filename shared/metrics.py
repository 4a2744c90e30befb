"""Prometheus metrics named as in design.md §10. Never a secret or an email in a label."""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter("linkshop_http_requests_total", "HTTP requests served",
                        ["service", "route", "method", "status"])
http_duration = Histogram("linkshop_http_request_duration_seconds", "HTTP request duration",
                          ["service", "route", "method"], buckets=LATENCY_BUCKETS)
events_published = Counter("linkshop_events_published_total", "Events published to the bus",
                           ["service", "type"])
events_consumed = Counter("linkshop_events_consumed_total", "Events consumed, by outcome",
                          ["service", "type", "outcome"])
outbox_pending = Gauge("linkshop_outbox_pending", "Outbox rows not yet published",
                       ["service"], multiprocess_mode="livemostrecent")
event_lag = Histogram("linkshop_event_lag_seconds", "From an event's occurrence to its handling",
                      ["service", "type"], buckets=LATENCY_BUCKETS + (30.0, 60.0, 300.0))
orders = Counter("linkshop_orders_total", "Orders entering a status", ["status"])
# waited_for: "payment" (sold in the payment's transaction), "risk" (at risk's decision),
# "review" (after an operator's review), "stock" (when keys were imported).
delivery_latency = Histogram("linkshop_delivery_latency_seconds", "Paid to delivered", ["waited_for"],
                             buckets=LATENCY_BUCKETS)
stock_available = Gauge("linkshop_stock_available", "Keys available per product", ["product"],
                        multiprocess_mode="livemostrecent")
revenue_cents = Counter("linkshop_revenue_cents_total", "Amount of delivered orders, in cents", ["currency"])
commission_cents = Counter("linkshop_commission_cents_total", "Commission accrued, in cents", ["level"])
ledger_imbalance = Gauge("linkshop_ledger_imbalance_cents", "Sum of all ledger postings (must be 0)",
                         multiprocess_mode="livemostrecent")
# outcome: what the notice did (paid, delivered, awaiting_stock, replay, duplicate_payment,
# not_paid...) or why it was refused (bad_signature, bad_notice, unknown_order, wrong_provider,
# amount_mismatch); the refusals are what the alert watches.
payment_notices = Counter("linkshop_payment_notices_total", "Payment notices received, by outcome",
                          ["provider", "outcome"])
# The same outcomes, for payments found by asking the provider (a notice that never came).
payment_recoveries = Counter("linkshop_payment_recoveries_total",
                             "Payments applied from a provider's answer to a query, by outcome",
                             ["provider", "outcome"])
provider_refunds = Counter("linkshop_provider_refunds_total", "Refunds sent to payment providers, by outcome",
                           ["provider", "outcome"])
worker_heartbeat = Gauge("linkshop_worker_heartbeat_timestamp_seconds",
                         "Last time the worker's loops made progress", ["service"],
                         multiprocess_mode="livemostrecent")


def render() -> tuple[bytes, str]:
    """The exposition text, merged across gunicorn workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
