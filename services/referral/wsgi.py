"""gunicorn entry point: ``gunicorn services.referral.wsgi:app``."""
from .app import create_app

app = create_app()
