from __future__ import annotations

from shared.config import Settings, load_settings
from shared.db import Database
from shared.worker import WorkerSpec, run_worker

from .app import SERVICE, open_database
from .events import handlers
from .models import inbox, outbox


def build_worker(settings: Settings, db: Database | None = None) -> WorkerSpec:
    return WorkerSpec(SERVICE, db or open_database(settings), outbox, inbox, handlers)


def main() -> None:
    settings = load_settings(SERVICE)
    run_worker(build_worker(settings), settings)


if __name__ == "__main__":
    main()
