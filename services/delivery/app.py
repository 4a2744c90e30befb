from __future__ import annotations

from shared.config import Settings, load_settings
from shared.db import Database
from shared.web import create_service_app

from .api import bp
from .config import DeliveryConfig, load_config
from .models import Base, outbox
from .vault import Vault

SERVICE = "delivery"


def open_database(settings: Settings) -> Database:
    return Database(settings.database_url, Base.metadata)


def create_app(settings: Settings | None = None, db: Database | None = None, bus=None,
               config: DeliveryConfig | None = None):
    settings = settings or load_settings(SERVICE)
    config = config or load_config(settings)  # refuses to start in real mode without the vault key
    db = db or open_database(settings)
    app = create_service_app(SERVICE, settings, db, outbox=outbox, bus=bus)
    app.extensions["linkshop"].extra.update(vault=Vault(config.vault_key, config.vault_previous_keys), providers=config.providers)
    app.register_blueprint(bp)
    return app
