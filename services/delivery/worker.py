from __future__ import annotations

import logging
import time

from shared.config import Settings, load_settings
from shared.db import Database
from shared.events import utcnow
from shared.worker import Job, WorkerSpec, run_worker

from . import domain
from .app import SERVICE, open_database
from .config import DeliveryConfig, load_config
from .events import build_handlers
from .mail import FileTransport, SmtpTransport
from .models import inbox, outbox
from .payments import Provider, ProviderError
from .vault import Vault

log = logging.getLogger("linkshop.delivery.worker")


SOLD_REFRESH_S = 300.0


def build_worker(settings: Settings, db: Database | None = None, config: DeliveryConfig | None = None) -> WorkerSpec:
    """``config``: the payment providers (the worker sends refunds to them and asks them about
    payments whose notice never came), the vault key (it opens the vault to write the buyer's
    e-mail, keys included) and where e-mail goes (``send_mails``)."""
    config = config or load_config(settings)
    db = db or open_database(settings)
    providers = config.providers
    transport = (SmtpTransport(config.smtp) if config.smtp is not None
                 else FileTransport(config.mail_dir) if config.mail_dir is not None else None)
    if transport is None:
        log.warning("delivery worker: %s", config.mail_note)
    else:
        log.info("delivery worker: %s", config.mail_note)

    def expire():
        while True:  # a backlog after downtime is worked off in batches, each its own transaction
            with db.write() as session:
                if domain.expire_reservations(session, utcnow()) < 500:
                    return

    def forget_rate_windows():
        with db.write() as session:
            domain.forget_old_rate_windows(session, utcnow())

    weekly = {"sold": None, "at": 0.0}

    def stock():
        # The low-stock threshold moves by the day; the week's sales are summed every few
        # minutes, not at every stock check.
        now, tick = utcnow(), time.monotonic()
        with db.write() as session:
            if weekly["sold"] is None or tick - weekly["at"] > SOLD_REFRESH_S:
                weekly["sold"], weekly["at"] = domain.sold_last_week(session, now), tick
            domain.sync_stock(session, settings.stock_low_floor, now, weekly["sold"])

    def send_refunds():
        while domain.send_refunds(db, providers) == domain.REFUND_BATCH:  # a backlog, in batches
            pass

    vault = Vault(config.vault_key, config.vault_previous_keys) if transport is not None else None

    def send_mails():
        while domain.send_mails(db, vault, transport, config.mail_from, settings.public_url) == domain.MAIL_BATCH:
            pass

    # Only providers with a gateway to ask (the sandbox has none).
    queryable = [name for name, p in providers.items() if type(p).query is not Provider.query]

    def recover_payments():
        with db.write() as session:
            due = domain.orders_to_check(session, queryable, utcnow(), config.payment_query_after_s,
                                         config.payment_query_every_s)
        for order_no, provider_name, ref in due:  # one by one, no transaction open while asking
            try:
                domain.recover_payment(db, settings, providers[provider_name], order_no, ref)
            except ProviderError as exc:
                log.warning("could not ask %s about order %s: %s", provider_name, order_no, exc)

    jobs = [Job("expire_reservations", 1.0, expire), Job("sync_stock", settings.stock_sync_interval_s, stock),
            Job("forget_rate_windows", 300.0, forget_rate_windows), Job("send_refunds", 2.0, send_refunds)]
    if queryable:
        jobs.append(Job("recover_payments", 15.0, recover_payments))
    if transport is not None:
        jobs.append(Job("send_mails", 2.0, send_mails))
    return WorkerSpec(SERVICE, db, outbox, inbox, build_handlers(settings, mail=transport is not None), jobs)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
