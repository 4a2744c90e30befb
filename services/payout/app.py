from __future__ import annotations

from shared.config import Settings, load_settings
from shared.db import Database
from shared.web import create_service_app

from .api import bp
from .config import PayoutConfig, load_config
from .models import Base, outbox

SERVICE = "payout"


def open_database(settings: Settings) -> Database:
    return Database(settings.database_url, Base.metadata)


def create_app(settings: Settings | None = None, db: Database | None = None, bus=None,
               config: PayoutConfig | None = None):
    settings = settings or load_settings(SERVICE)
    # Refuses to start if the hold is shorter than the refund window. Alipay's keys are the
    # worker's alone: the API sends no transfer.
    config = config or load_config(settings, transfer_keys=False)
    db = db or open_database(settings)
    app = create_service_app(SERVICE, settings, db, outbox=outbox, bus=bus)
    app.extensions["linkshop"].extra["config"] = config
    app.register_blueprint(bp)
    return app
