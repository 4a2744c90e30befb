from __future__ import annotations

from shared.config import Settings, load_settings
from shared.db import Database
from shared.web import create_service_app

from .api import bp
from .models import Base, outbox

SERVICE = "risk"


def open_database(settings: Settings) -> Database:
    return Database(settings.database_url, Base.metadata)


def create_app(settings: Settings | None = None, db: Database | None = None, bus=None):
    settings = settings or load_settings(SERVICE)
    db = db or open_database(settings)
    app = create_service_app(SERVICE, settings, db, outbox=outbox, bus=bus)
    app.register_blueprint(bp)
    return app
