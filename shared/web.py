"""The Flask app every service builds on: JSON errors, health, metrics, request metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from . import metrics
from .config import Settings
from .db import Database
from .errors import register_error_handlers


@dataclass
class ServiceContext:
    settings: Settings
    db: Database
    outbox: Any = None
    extra: dict = field(default_factory=dict)


def ctx() -> ServiceContext:
    return current_app.extensions["linkshop"]


def create_service_app(service: str, settings: Settings, db: Database, outbox=None, bus=None) -> Flask:
    app = Flask(f"linkshop.{service}", static_folder=None)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024  # 100,000 keys in one import
    app.extensions["linkshop"] = ServiceContext(settings=settings, db=db, outbox=outbox)
    register_error_handlers(app)
    _install_request_metrics(app, service)
    app.register_blueprint(_operational_blueprint(service, db, bus, settings.embedded))
    return app


def _install_request_metrics(app: Flask, service: str) -> None:
    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.http_requests.labels(service, rule, request.method, str(response.status_code)).inc()
        metrics.http_duration.labels(service, rule, request.method).observe(elapsed)
        return response


def _operational_blueprint(service: str, db: Database, bus, embedded: bool) -> Blueprint:
    """Health and metrics. In real mode the API's readiness is its database alone: it never
    talks to the broker (the outbox absorbs a broker outage), so a RabbitMQ failure must not
    take every API out of its Service. The worker's /readyz checks both."""
    bp = Blueprint(f"{service}_ops", __name__)
    bus_state = {"ok": None, "checked": 0.0}

    def bus_ok() -> bool:
        if bus is None:
            return True
        now = time.monotonic()
        if now - bus_state["checked"] > 5:  # probes come often; a broker handshake is not free
            bus_state["ok"], bus_state["checked"] = bus.ping(), now
        return bus_state["ok"]

    @bp.get(f"/{service}/healthz")
    def healthz():
        return jsonify({"status": "ok", "service": service})

    @bp.get(f"/{service}/readyz")
    def readyz():
        checks = {"database": db.ping(), "bus": bus_ok()}
        status = 200 if all(checks.values()) else 503
        return jsonify({"status": "ready" if status == 200 else "unavailable", "checks": checks}), status

    def expose():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @bp.get(f"/{service}/openapi.json")
    def openapi():
        from flask import current_app

        from .openapi import build_spec
        return jsonify(build_spec(current_app, service))

    if embedded:  # one port for everything; in real mode /metrics stays on the pod, off the Ingress
        bp.add_url_rule(f"/{service}/metrics", f"{service}_metrics", expose)
    bp.add_url_rule("/metrics", "metrics", expose)
    return bp
