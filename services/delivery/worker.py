from __future__ import annotations

import time

from shared.config import Settings, load_settings
from shared.db import Database
from shared.events import utcnow
from shared.worker import Job, WorkerSpec, run_worker

from . import domain
from .app import SERVICE, open_database
from .events import build_handlers
from .models import inbox, outbox


SOLD_REFRESH_S = 300.0


def build_worker(settings: Settings, db: Database | None = None, config=None) -> WorkerSpec:
    """``config`` (DeliveryConfig) is accepted like every service's and unused: the worker
    never opens the vault."""
    db = db or open_database(settings)

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

    jobs = [Job("expire_reservations", 1.0, expire), Job("sync_stock", settings.stock_sync_interval_s, stock),
            Job("forget_rate_windows", 300.0, forget_rate_windows)]
    return WorkerSpec(SERVICE, db, outbox, inbox, build_handlers(settings), jobs)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
