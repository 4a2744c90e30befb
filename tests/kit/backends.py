"""Where a test's embedded system keeps its data: the backend.

``SQLiteBackend`` is embedded mode as ``make run`` runs it: one SQLite file per service in
the test's own directory, tables created from the models."""
from __future__ import annotations

from shared.config import load_settings

from .helpers import embedded_env


class SQLiteBackend:
    name = "sqlite"

    def __init__(self):
        self._opened: list = []  # every Database built here, disposed by close()

    def env(self, var_dir, **extra: str) -> dict[str, str]:
        """An embedded-mode environment whose services keep their data in ``var_dir``."""
        return embedded_env(var_dir, **extra)

    def build(self, env: dict):
        """``build_embedded`` on this backend; ``env["LINKSHOP_VAR_DIR"]`` names the data."""
        from services.embedded import build_embedded
        system = build_embedded(env, migrate=False)
        self._opened += [app.extensions["linkshop"].db for app in system.apps.values()]
        return system

    def open_database(self, service: str, var_dir) -> "Database":  # noqa: F821
        """One service's ``Database`` with its tables, alone (domain-level tests)."""
        db = _open(service, embedded_env(var_dir))
        db.create_all()
        self._opened.append(db)
        return db

    def close(self) -> None:
        for db in self._opened:
            db.dispose()
        self._opened.clear()


def _open(service: str, env: dict):
    import importlib
    app = importlib.import_module(f"services.{service}.app")
    return app.open_database(load_settings(service, env))


def sqlite_backend() -> SQLiteBackend:
    """The SQLite backend, for a shop built without the ``backend`` fixture."""
    return SQLiteBackend()
