"""The event bus: RabbitMQ through kombu in real mode, an in-process bus in embedded mode.

Both deliver at least once and retry a failed message with backoff, then dead-letter it;
the inbox makes redelivery harmless. A message is acked only after its transaction commits.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque

from . import metrics, topology
from .events import PoisonMessage, parse_envelope

log = logging.getLogger("linkshop.bus")
ATTEMPT_HEADER = "x-linkshop-attempt"


def make_bus(settings):
    if settings.embedded:
        return MemoryBus(settings.bus_retry_delays_ms, settings.bus_max_attempts)
    return AmqpBus(settings.bus_url, settings.bus_retry_delays_ms, settings.bus_max_attempts)


def _retry_delay(delays_ms, attempt: int) -> int:
    return delays_ms[min(attempt - 1, len(delays_ms) - 1)] if delays_ms else 0


class MemoryBus:
    """In-process bus for embedded mode and fast tests, with the same retry/dead semantics."""

    def __init__(self, retry_delays_ms=(0,), max_attempts: int = 5):
        self.retry_delays_ms = tuple(retry_delays_ms) or (0,)
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._queues = {svc: deque() for svc in topology.CONSUMES}
        self.dead: dict[str, list[bytes]] = {svc: [] for svc in topology.CONSUMES}

    def publish(self, envelopes: list[dict]) -> None:
        with self._lock:
            for envelope in envelopes:
                body = json.dumps(envelope).encode()
                for service in topology.consumers_of(envelope["type"]):
                    self._queues[service].append((body, 1, 0.0))

    def inject(self, service: str, body: bytes) -> None:
        """Put a raw message on a service's inbox (tests: poison and duplicates)."""
        with self._lock:
            self._queues[service].append((body, 1, 0.0))

    def pending(self, service: str) -> int:
        return len(self._queues[service])

    def deliver(self, service: str, consumer) -> int:
        """Hand every message that is due to the consumer once; returns how many were tried."""
        now = time.monotonic()
        with self._lock:
            queue = self._queues[service]
            due = [m for m in queue if m[2] <= now]
            for message in due:
                queue.remove(message)
        for body, attempt, _ in due:
            try:
                envelope = parse_envelope(body)
            except PoisonMessage as exc:
                log.error("%s: poison message dead-lettered: %s", service, exc)
                metrics.events_consumed.labels(service, "unknown", "poison").inc()
                self.dead[service].append(body)
                continue
            try:
                consumer.handle(envelope)
            except Exception as exc:  # retried with backoff, then dead-lettered
                log.warning("%s: %s %s failed (attempt %d): %r", service, envelope["type"],
                            envelope["id"], attempt, exc)
                with self._lock:
                    if attempt >= self.max_attempts:
                        self.dead[service].append(body)
                        metrics.events_consumed.labels(service, envelope["type"], "dead").inc()
                    else:
                        delay = _retry_delay(self.retry_delays_ms, attempt) / 1000
                        self._queues[service].append((body, attempt + 1, time.monotonic() + delay))
        return len(due)

    def ping(self) -> bool:
        return True


class AmqpBus:
    """kombu on RabbitMQ: publisher confirms, ``mandatory``, a retry policy, ack after commit."""

    RETRY_POLICY = {"max_retries": 5, "interval_start": 0, "interval_step": 0.5, "interval_max": 3}

    def __init__(self, url: str, retry_delays_ms=(1000, 5000, 30000), max_attempts: int = 12,
                 batch_size: int = 32):
        self.url = url
        self.batch_size = batch_size
        self.retry_delays_ms = tuple(retry_delays_ms) or (1000,)
        self.max_attempts = max_attempts
        self._local = threading.local()
        self.unroutable = 0

    def _connect(self):
        from kombu import Connection
        return Connection(self.url, transport_options={"confirm_publish": True}, heartbeat=30,
                          connect_timeout=5)

    # -- topology -------------------------------------------------------------------------
    def declare(self, conn=None) -> None:
        from kombu import Exchange, Queue
        own = conn is None
        conn = conn or self._connect()
        try:
            channel = conn.default_channel
            exchange = Exchange(topology.EXCHANGE, type="topic", durable=True)
            exchange.declare(channel=channel)
            for service, types in topology.CONSUMES.items():
                dead = Queue(topology.dead_queue(service), durable=True, channel=channel,
                             queue_arguments={"x-queue-type": "quorum"})
                dead.declare()
                inbox = Queue(topology.inbox_queue(service), durable=True, channel=channel,
                              queue_arguments={
                                  "x-queue-type": "quorum",
                                  "x-delivery-limit": topology.DELIVERY_LIMIT,
                                  "x-dead-letter-exchange": "",
                                  "x-dead-letter-routing-key": topology.dead_queue(service),
                              })
                inbox.declare()
                for type_ in types:
                    inbox.bind_to(exchange=exchange, routing_key=type_)
                for delay in sorted(set(self.retry_delays_ms)):
                    Queue(topology.retry_queue(service, delay), durable=True, channel=channel,
                          queue_arguments={
                              "x-message-ttl": delay,
                              "x-dead-letter-exchange": "",
                              "x-dead-letter-routing-key": topology.inbox_queue(service),
                          }).declare()
        finally:
            if own:
                conn.release()

    # -- publishing -----------------------------------------------------------------------
    def _producer(self):
        from kombu import Producer
        producer = getattr(self._local, "producer", None)
        if producer is None:
            conn = self._connect()
            conn.ensure_connection(max_retries=3)
            producer = Producer(conn.channel(), on_return=self._on_return)
            self._local.conn, self._local.producer = conn, producer
        return producer

    def _on_return(self, exception, exchange, routing_key, message):
        self.unroutable += 1
        log.error("event %s was unroutable: no queue is bound to it", routing_key)

    def publish(self, envelopes: list[dict]) -> None:
        try:
            producer = self._producer()
            for envelope in envelopes:
                producer.publish(
                    json.dumps(envelope, separators=(",", ":")), exchange=topology.EXCHANGE,
                    routing_key=envelope["type"], content_type="application/json",
                    content_encoding="utf-8", delivery_mode=2, mandatory=True,
                    message_id=envelope["id"], headers={ATTEMPT_HEADER: 1},
                    retry=True, retry_policy=self.RETRY_POLICY)
        except Exception:
            self.close_publisher()
            raise

    def close_publisher(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = self._local.producer = None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                pass

    # -- consuming ------------------------------------------------------------------------
    def consume(self, service: str, consumer, stop: threading.Event, prefetch: int = 32,
                on_tick=None) -> None:
        """Consume ``<service>.inbox`` until ``stop`` is set; reconnects on broker errors."""
        from kombu import Consumer as KombuConsumer, Producer, Queue
        backoff = 0.5
        while not stop.is_set():
            try:
                # Retries are published on a connection of their own: waiting for a publisher
                # confirm on the consuming connection would dispatch further deliveries inside the
                # failed message's callback, nesting without bound and never getting back to the
                # loop below that checks ``stop`` (a failing backlog would then ignore SIGTERM).
                with self._connect() as conn, self._connect() as retry_conn:
                    conn.ensure_connection(max_retries=3)
                    retry_conn.ensure_connection(max_retries=3)
                    self.declare(conn)
                    channel = conn.channel()
                    channel.basic_qos(0, prefetch, False)
                    retry_producer = Producer(retry_conn.channel())
                    queue = Queue(topology.inbox_queue(service), no_declare=True)
                    batch: list = []

                    with KombuConsumer(channel, queues=[queue], on_message=batch.append, accept=None):
                        backoff = 0.5
                        while not stop.is_set():
                            if on_tick:
                                on_tick()
                            try:
                                conn.drain_events(timeout=0.5)
                            except socket.timeout:
                                conn.heartbeat_check()
                                continue
                            # take what has already arrived too: one commit for the lot
                            while len(batch) < self.batch_size:
                                try:
                                    conn.drain_events(timeout=0)
                                except socket.timeout:
                                    break
                            messages, batch[:] = list(batch), []
                            self._on_messages(service, consumer, retry_producer, messages)
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("%s: bus connection lost (%r); reconnecting in %.1fs", service, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10)

    def _on_messages(self, service, consumer, retry_producer, messages) -> None:
        """Apply a batch in one transaction; then ack, retry or dead-letter each message."""
        parsed = []
        for message in messages:
            try:
                parsed.append((message, parse_envelope(message.body)))
            except PoisonMessage as exc:
                log.error("%s: poison message dead-lettered: %s", service, exc)
                metrics.events_consumed.labels(service, "unknown", "poison").inc()
                message.reject(requeue=False)  # the inbox's dead-letter exchange routes it to <svc>.dead
        if not parsed:
            return
        results = consumer.handle_batch([envelope for _, envelope in parsed])
        for (message, envelope), result in zip(parsed, results):
            if isinstance(result, Exception):
                self._retry(service, retry_producer, message, envelope, result)
            else:
                message.ack()

    def _retry(self, service, retry_producer, message, envelope, exc) -> None:
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 1))
        log.warning("%s: %s %s failed (attempt %d): %r", service, envelope["type"], envelope["id"], attempt, exc)
        if attempt >= self.max_attempts:
            metrics.events_consumed.labels(service, envelope["type"], "dead").inc()
            message.reject(requeue=False)
            return
        delay = _retry_delay(self.retry_delays_ms, attempt)
        headers = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt + 1
        headers.pop("x-death", None)
        retry_producer.publish(message.body, exchange="", routing_key=topology.retry_queue(service, delay),
                               content_type="application/json", content_encoding="utf-8",
                               delivery_mode=2, headers=headers, message_id=envelope["id"],
                               retry=True, retry_policy=self.RETRY_POLICY)
        message.ack()

    def ping(self) -> bool:
        try:
            with self._connect() as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False
