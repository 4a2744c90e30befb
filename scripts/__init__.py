"""Operator scripts: ``python -m scripts.stack up|down|status`` (``make up`` / ``make down``)."""
