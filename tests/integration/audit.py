"""The leak audit of an integration run (design §8, invariant 8): no card secret in any log line
the run's processes wrote nor in any event that crossed the broker, and no bearer credential
(order access token, merchant API key, user token, the admin token) in any log line.

It runs twice, so that no test has to come last: ``test_zz_audit.py`` makes traffic of its own
and audits the run so far, and the ``run`` fixture audits the whole run once every process has
stopped (every log line written, every event tapped), failing the session if anything leaked.
"""
from __future__ import annotations

TAP_QUEUE = "it.tap"  # bound to every event type: the audit reads every payload of the run


def hits(texts: dict[str, bytes], needles: list[str]) -> list[str]:
    found = []
    for name, text in texts.items():
        for needle in needles:
            if needle.encode() in text:
                found.append(f"{needle[:6]}... in {name}")
    return found


def logs(run) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in run.stack.run_dir.rglob("*.log")}


def events(run) -> dict[str, bytes]:
    """Every event the tap queue has seen in this run: what is waiting now is taken off the
    queue and kept on ``run.tapped``, so a later audit still reads it."""
    run.tapped.extend(run.broker.drain(TAP_QUEUE))
    return {f"event #{i} on the broker": body for i, body in enumerate(run.tapped)}


def card_secret_leaks(run) -> list[str]:
    return hits(logs(run), run.card_secrets) + hits(events(run), run.card_secrets)


def credential_leaks(run) -> list[str]:
    return hits(logs(run), run.credentials + [run.env["LINKSHOP_ADMIN_TOKEN"]])


def leaks(run) -> list[str]:
    return card_secret_leaks(run) + credential_leaks(run)
