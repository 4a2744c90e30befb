from __future__ import annotations

from shared.config import Settings, load_settings
from shared.db import Database
from shared.events import utcnow
from shared.worker import Job, WorkerSpec, run_worker

from . import domain
from .app import SERVICE, open_database
from .events import build_handlers
from .models import inbox, outbox


def build_worker(settings: Settings, db: Database | None = None) -> WorkerSpec:
    db = db or open_database(settings)

    def expire():
        while True:  # a backlog after downtime is worked off in batches, each its own transaction
            with db.write() as session:
                if domain.expire_reservations(session, utcnow()) < 500:
                    return

    def forget_rate_windows():
        with db.write() as session:
            domain.forget_old_rate_windows(session, utcnow())

    def stock():
        with db.write() as session:
            domain.sync_stock(session, settings.stock_low_floor, utcnow())

    jobs = [Job("expire_reservations", 1.0, expire), Job("sync_stock", settings.stock_sync_interval_s, stock),
            Job("forget_rate_windows", 300.0, forget_rate_windows)]
    return WorkerSpec(SERVICE, db, outbox, inbox, build_handlers(settings), jobs)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
