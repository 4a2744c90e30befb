"""The worker process of a service: its consumer, its outbox relay and its periodic jobs.

These never run inside gunicorn workers. In real mode each service runs one
``python -m services.<svc>.worker``; embedded mode drives every service's worker from one
background thread over the in-process bus (``EmbeddedHub``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from sqlalchemy import Table

from . import metrics
from .bus import AmqpBus, MemoryBus
from .config import Settings
from .db import Database
from .inbox import Consumer, Handlers
from .outbox import Outbox, Relay, relay_wanted

log = logging.getLogger("linkshop.worker")


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[], None]
    next_at: float = 0.0


@dataclass
class WorkerSpec:
    service: str
    db: Database
    outbox: Outbox
    inbox: Table
    handlers: Handlers
    jobs: list[Job] = field(default_factory=list)

    def consumer(self) -> Consumer:
        return Consumer(self.service, self.db, self.inbox, self.handlers)


def retention_job(spec: WorkerSpec, settings: Settings) -> Job:
    """Every service's worker forgets outbox rows sent a day ago and inbox ids a week old
    (``LINKSHOP_OUTBOX_RETENTION_S``, ``LINKSHOP_INBOX_RETENTION_S``): at a few hundred
    orders a second both tables would otherwise grow by millions of rows a day."""
    from datetime import timedelta

    from .events import utcnow
    from .inbox import prune_inbox

    def prune():
        for _ in range(20):  # at most 100,000 rows of each a minute, in short transactions
            now = utcnow()
            with spec.db.write() as session:
                gone = spec.outbox.prune(session, now - timedelta(seconds=settings.outbox_retention_s))
                gone += prune_inbox(session, spec.inbox, now - timedelta(seconds=settings.inbox_retention_s))
            if gone < 5000:
                return

    return Job("prune_outbox_and_inbox", 60.0, prune)


def run_due_jobs(spec: WorkerSpec, now: float) -> None:
    for job in spec.jobs:
        if now >= job.next_at:
            job.next_at = now + job.interval_s
            try:
                job.run()
            except Exception:
                log.exception("%s: job %s failed", spec.service, job.name)


class EmbeddedHub:
    """All services' workers in one process over a MemoryBus (``make run`` and fast tests)."""

    def __init__(self, specs: list[WorkerSpec], bus: MemoryBus, idle_sleep_s: float = 0.02):
        self.specs = specs
        self.bus = bus
        self.idle_sleep_s = idle_sleep_s
        self._relays = [Relay(spec.db, spec.outbox, bus) for spec in specs]
        self._consumers = [(spec.service, spec.consumer()) for spec in specs]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pump(self) -> int:
        moved = sum(relay.run_once() for relay in self._relays)
        moved += sum(self.bus.deliver(service, consumer) for service, consumer in self._consumers)
        return moved

    def drain(self, max_rounds: int = 200) -> None:
        """Relay and consume until nothing moves (tests call this instead of sleeping)."""
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise RuntimeError("events kept flowing after %d rounds" % max_rounds)

    def run_jobs(self, force: bool = False) -> None:
        now = time.monotonic()
        for spec in self.specs:
            if force:
                for job in spec.jobs:
                    job.next_at = 0
            run_due_jobs(spec, now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="embedded-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.pump()
                self.run_jobs()
            except Exception:
                log.exception("embedded hub iteration failed")
                moved = 0
            if not moved:
                self._stop.wait(self.idle_sleep_s)


class _Heartbeat:
    """Each loop beats once per round; the gauge is written at most once a second (a labelled
    gauge write per consumed batch was a visible share of a busy worker's CPU)."""

    def __init__(self, service: str):
        self.service = service
        self.at = time.time()
        self._gauge, self._published = metrics.worker_heartbeat.labels(service), 0.0

    def beat(self) -> None:
        self.at = now = time.time()
        if now - self._published >= 1.0:
            self._gauge.set(now)
            self._published = now

    def fresh(self, max_age_s: float = 30) -> bool:
        return time.time() - self.at < max_age_s


def _serve_health(spec: WorkerSpec, bus: AmqpBus, heartbeats: list[_Heartbeat], port: int):
    """/healthz (loops alive), /readyz (database and broker) and /metrics for the worker pod."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.endswith("/metrics"):
            body, content_type = metrics.render()
            start_response("200 OK", [("Content-Type", content_type)])
            return [body]
        if path.endswith("/healthz"):
            ok = all(h.fresh() for h in heartbeats)
        elif path.endswith("/readyz"):
            ok = spec.db.ping() and bus.ping()
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error":{"code":"not_found","message":"not found","fields":{}}}']
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps({"status": "ok" if ok else "unavailable"}).encode()]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("0.0.0.0", port, app, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def run_worker(spec: WorkerSpec, settings: Settings) -> None:
    """Real mode: consume, relay and run jobs until SIGTERM, then finish what is held and exit."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.embedded:
        raise SystemExit("the worker process is for real mode: set BUS_URL to an amqp:// URL")
    bus = AmqpBus(settings.bus_url, settings.bus_retry_delays_ms, settings.bus_max_attempts)
    bus.declare()
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("%s worker: signal %d, finishing", spec.service, signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    spec.jobs.append(retention_job(spec, settings))
    consume_beat, relay_beat = _Heartbeat(spec.service), _Heartbeat(spec.service)
    port = os.environ.get("WORKER_PORT")
    server = _serve_health(spec, bus, [consume_beat, relay_beat], int(port)) if port else None

    consumer_thread = threading.Thread(
        target=bus.consume, name="consumer",
        args=(spec.service, spec.consumer(), stop), kwargs={"on_tick": consume_beat.beat})
    consumer_thread.start()
    relay = Relay(spec.db, spec.outbox, bus)
    last_gauge = 0.0
    log.info("%s worker started (consumes %s)", spec.service, ", ".join(spec.handlers.types) or "nothing")
    while not stop.is_set():
        relay_beat.beat()
        moved = 0
        try:
            moved = relay.run_once()
            now = time.monotonic()
            run_due_jobs(spec, now)
            if now - last_gauge > 5:
                relay.refresh_gauge()
                last_gauge = now
        except Exception:
            log.exception("%s: relay iteration failed", spec.service)
            stop.wait(1)
        if not moved:
            relay_wanted.wait(settings.relay_interval_s)
            relay_wanted.clear()
    consumer_thread.join(timeout=60)
    try:  # flush what the last handled messages wrote
        while relay.run_once():
            pass
    except Exception:
        log.exception("%s: final outbox flush failed; rows stay for the next start", spec.service)
    if server:
        server.shutdown()
    log.info("%s worker stopped", spec.service)
