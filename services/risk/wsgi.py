"""gunicorn entry point: ``gunicorn services.risk.wsgi:app``."""
from .app import create_app

app = create_app()
