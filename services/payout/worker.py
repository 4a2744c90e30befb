from __future__ import annotations

from prometheus_client import Gauge

from shared import metrics
from shared.config import Settings, load_settings
from shared.db import Database
from shared.events import utcnow
from shared.worker import Job, WorkerSpec, run_worker

from . import domain, ledger
from .app import SERVICE, open_database
from .config import PayoutConfig, load_config
from .events import build_handlers
from .models import inbox, outbox

# docs/operations.md "metrics the services still owe"; payout's own, so defined here.
withdrawals_review_oldest = Gauge("linkshop_withdrawals_pending_review_oldest_seconds",
                                  "Age of the oldest withdrawal waiting for an operator's review",
                                  multiprocess_mode="livemostrecent")


def now():
    """The jobs' clock (tests move it)."""
    return utcnow()


def build_worker(settings: Settings, db: Database | None = None, config: PayoutConfig | None = None) -> WorkerSpec:
    config = config or load_config(settings)
    db = db or open_database(settings)

    def release():
        while True:  # a backlog is worked off in batches, each its own transaction
            with db.write() as session:
                if domain.release_due(session, now(), config.release_batch) < config.release_batch:
                    return

    def decide():
        with db.write() as session:
            domain.decide_by_policy(session, config, now())

    def pay():
        with db.write() as session:
            domain.pay_approved(session, config, now())

    def gauges():
        with db.read() as session:
            metrics.ledger_imbalance.set(ledger.imbalance(session))
            withdrawals_review_oldest.set(domain.oldest_review_seconds(session, now()))

    jobs = [Job("release", config.release_interval_s, release), Job("ledger_gauges", 15.0, gauges)]
    if not config.risk_required:
        jobs.append(Job("withdrawal_policy", 1.0, decide))
    if config.sandbox_payouts:
        jobs.append(Job("sandbox_payouts", 1.0, pay))
    return WorkerSpec(SERVICE, db, outbox, inbox, build_handlers(config), jobs)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
