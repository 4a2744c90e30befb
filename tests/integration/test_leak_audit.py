"""After everything else ran: no card secret in any log line the run's processes wrote, nor in
any event that crossed the broker (design §8, invariant 8)."""
from __future__ import annotations

import pytest

from .conftest import TAP_QUEUE

pytestmark = pytest.mark.audit_last


def _hits(texts: dict[str, bytes], needles: list[str]) -> list[str]:
    found = []
    for name, text in texts.items():
        for needle in needles:
            if needle.encode() in text:
                found.append(f"{needle[:6]}... in {name}")
    return found


def test_no_card_secret_in_logs_or_events(run):
    if not run.card_secrets:
        pytest.skip("no keys were imported in this run")
    logs = {str(path): path.read_bytes() for path in run.stack.run_dir.rglob("*.log")}
    assert logs and sum(len(t) for t in logs.values()) > 0
    events = {f"event #{i} on the broker": body for i, body in enumerate(run.broker.drain(TAP_QUEUE))}
    assert events, "the tap queue saw no events"
    leaks = _hits(logs, run.card_secrets) + _hits(events, run.card_secrets)
    assert not leaks, f"{len(leaks)} card secrets leaked: {leaks[:10]}"


def test_no_bearer_credentials_in_logs(run):
    """Order access tokens (they unlock the keys) and merchant API keys stay out of the logs too."""
    if not run.credentials:
        pytest.skip("no credentials were handed out in this run")
    logs = {str(path): path.read_bytes() for path in run.stack.run_dir.rglob("*.log")}
    leaks = _hits(logs, run.credentials + [run.env["LINKSHOP_ADMIN_TOKEN"]])
    assert not leaks, f"{len(leaks)} credentials leaked: {leaks[:10]}"
