"""gunicorn entry point: ``gunicorn services.payout.wsgi:app``."""
from .app import create_app

app = create_app()
