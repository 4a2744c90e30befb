"""gunicorn entry point: ``gunicorn services.delivery.wsgi:app``."""
from .app import create_app

app = create_app()
