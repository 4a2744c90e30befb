"""gunicorn entry point: ``gunicorn services.catalog.wsgi:app``."""
from .app import create_app

app = create_app()
