from __future__ import annotations

import logging

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
from .transfers import AlipayTransfers, TransferOrder

log = logging.getLogger("linkshop.payout.worker")
TRANSFER_INTERVAL_S = 3.0

# docs/operations.md "metrics the services still owe"; payout's own, so defined here.
withdrawals_review_oldest = Gauge("linkshop_withdrawals_pending_review_oldest_seconds",
                                  "Age of the oldest withdrawal waiting for an operator's review",
                                  multiprocess_mode="livemostrecent")


def now():
    """The jobs' clock (tests move it)."""
    return utcnow()


def alipay_transfers(config: PayoutConfig, http=None) -> AlipayTransfers:
    from shared.alipay import AlipayClient
    if http is None:
        import requests
        http = requests.Session()
    return AlipayTransfers(AlipayClient(config.alipay, http))


def build_worker(settings: Settings, db: Database | None = None, config: PayoutConfig | None = None,
                 http=None) -> WorkerSpec:
    """``http``: the session Alipay's transfers are sent with (default: a new one)."""
    config = config or load_config(settings)
    db = db or open_database(settings)
    transfers = alipay_transfers(config, http) if config.payout_method == "alipay" else None

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

    def send_transfers():
        """approved → sending, committed; then each transfer sent with no transaction open;
        then each answer recorded in a transaction of its own. Then the transfers whose
        answer is still missing are asked about (and sent only if Alipay never got them)."""
        with db.write() as session:
            fresh = domain.start_transfers(session, config, now())
        for order in fresh:
            _record(order, transfers.send)
        with db.write() as session:
            unsettled = domain.transfers_to_check(session, now())
        for order in unsettled:
            _record(order, transfers.settle)

    def _record(order: TransferOrder, ask):
        try:
            outcome = ask(order)
            with db.write() as session:
                status = domain.record_transfer(session, order.withdrawal_id, outcome, now())
        except Exception:  # this one stays sending and is asked about later; the others go on
            log.exception("withdrawal %s: transfer not recorded; asking Alipay again later", order.withdrawal_id)
            return
        if status == "sending":  # the id and Alipay's code only: never the payee
            log.warning("withdrawal %s: no final answer from Alipay yet (%s); asking again later",
                        order.withdrawal_id, outcome.reason)

    def gauges():
        with db.read() as session:
            metrics.ledger_imbalance.set(ledger.imbalance(session))
            withdrawals_review_oldest.set(domain.oldest_review_seconds(session, now()))

    jobs = [Job("release", config.release_interval_s, release), Job("ledger_gauges", 15.0, gauges)]
    if not config.risk_required:
        jobs.append(Job("withdrawal_policy", 1.0, decide))
    if config.payout_method == "sandbox":
        jobs.append(Job("sandbox_payouts", 1.0, pay))
    elif transfers is not None:
        jobs.append(Job("alipay_transfers", TRANSFER_INTERVAL_S, send_transfers))
    # export: nothing runs by itself; the operator exports a batch and reports how each went
    return WorkerSpec(SERVICE, db, outbox, inbox, build_handlers(config), jobs)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
