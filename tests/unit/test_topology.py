"""A handler whose event type is not bound to its service's inbox would never run: every
registered handler must appear in the topology, declared in one place (shared/topology.py)."""
import importlib

import pytest

from shared import topology
from shared.config import SERVICES, load_settings


@pytest.mark.parametrize("service", SERVICES)
def test_every_handler_is_bound(service, tmp_path):
    worker = importlib.import_module(f"services.{service}.worker")
    spec = worker.build_worker(load_settings(service, {"LINKSHOP_VAR_DIR": str(tmp_path)}))
    unbound = set(spec.handlers.types) - set(topology.CONSUMES[service])
    assert not unbound, f"{service} handles {sorted(unbound)} but its inbox is not bound to them"
    spec.db.dispose()


def test_queue_names():
    assert topology.inbox_queue("delivery") == "delivery.inbox"
    assert topology.dead_queue("delivery") == "delivery.dead"
    assert topology.consumers_of("delivery.order.delivered") == ["catalog", "delivery", "referral", "payout", "risk"]
