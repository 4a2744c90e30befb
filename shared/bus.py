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
        self.publish_serialized([(e["id"], e["type"], json.dumps(e).encode()) for e in envelopes])

    def publish_serialized(self, events: list[tuple[str, str, bytes]]) -> None:
        """``publish`` for events already in their JSON form: (id, type, body)."""
        with self._lock:
            for _event_id, type_, body in events:
                for service in topology.consumers_of(type_):
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
    CONFIRM_TIMEOUT_S = 30.0

    def __init__(self, url: str, retry_delays_ms=(1000, 5000, 30000), max_attempts: int = 12,
                 batch_size: int = 32):
        self.url = url
        self.batch_size = batch_size
        self.retry_delays_ms = tuple(retry_delays_ms) or (1000,)
        self.max_attempts = max_attempts
        self._local = threading.local()
        self.unroutable = 0

    def _connect(self, confirm_each: bool = True):
        """``confirm_each``: kombu waits for the confirm of every message it publishes (the
        retry producer and tests); the outbox relay confirms whole batches instead."""
        from kombu import Connection
        return Connection(self.url, transport_options={"confirm_publish": confirm_each}, heartbeat=30,
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
    def _publisher(self) -> "_ConfirmingChannel":
        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            conn = self._connect(confirm_each=False)
            conn.ensure_connection(max_retries=3)
            publisher = self._local.publisher = _ConfirmingChannel(conn, self)
        return publisher

    def publish(self, envelopes: list[dict]) -> None:
        self.publish_serialized([(e["id"], e["type"], json.dumps(e, separators=(",", ":")).encode())
                                 for e in envelopes])

    def publish_serialized(self, events: list[tuple[str, str, bytes]]) -> None:
        """Publish the lot, (id, type, JSON body) each, then wait for all their confirms at once
        (a round trip per batch, not per message). Any failure raises: the caller's outbox rows
        stay unsent and go again, whole; consumers drop what had arrived already. A connection
        the broker has closed since the last batch is replaced once, here, before giving up."""
        for attempt in (1, 2):
            try:
                self._publisher().publish_confirmed(events, self.CONFIRM_TIMEOUT_S)
                return
            except Exception:
                self.close_publisher()
                if attempt == 2:
                    raise

    def _on_return(self, routing_key: str) -> None:
        self.unroutable += 1
        if topology.consumers_of(routing_key):  # a consumer's queue should be bound: it is not
            log.error("event %s was unroutable: no queue is bound to it", routing_key)
        else:  # announced for whoever subscribes later (design.md §4); nobody does yet
            log.debug("event %s has no consumer yet", routing_key)

    def close_publisher(self) -> None:
        publisher = getattr(self._local, "publisher", None)
        self._local.publisher = None
        if publisher is not None:
            publisher.close()

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
        last_done = None
        for (message, envelope), result in zip(parsed, results):
            if isinstance(result, Exception):
                self._retry(service, retry_producer, message, envelope, result)
            elif last_done is None or message.delivery_tag > last_done.delivery_tag:
                last_done = message
        if last_done is not None:
            # One ack for the batch: every earlier delivery on this channel is settled by now
            # (acked, retried or dead-lettered above), so ``multiple`` covers exactly the rest.
            last_done.channel.basic_ack(last_done.delivery_tag, multiple=True)

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


class _ConfirmingChannel:
    """A channel in confirm mode that publishes a batch and then waits for every confirm.

    Delivery tags count the messages published on the channel from 1; the broker acks (or
    nacks) them, singly or ``multiple`` up to a tag. A nack or a timeout fails the batch; a
    ``mandatory`` return (no queue bound to the type) is logged and counted.
    """

    def __init__(self, conn, bus: AmqpBus):
        self.conn = conn
        self.channel = conn.channel()
        self.channel.confirm_select()
        self.bus = bus
        self.published = 0
        self.unconfirmed: set[int] = set()
        self.failures: list[str] = []
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(self._on_return)

    def _settle(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.unconfirmed = {t for t in self.unconfirmed if t > tag}
        else:
            self.unconfirmed.discard(tag)

    def _on_ack(self, tag, multiple):
        self._settle(tag, multiple)

    def _on_nack(self, tag, multiple):
        self.failures.append(f"broker nacked message {tag}")
        self._settle(tag, multiple)

    def _on_return(self, exc, exchange, routing_key, message):
        # No queue is bound to this type: nobody consumes it, so sending it again would only
        # block every later event behind it. It is logged and counted, not retried.
        self.bus._on_return(routing_key)

    def publish_confirmed(self, events: list[tuple[str, str, bytes]], timeout_s: float) -> None:
        self.failures.clear()
        for event_id, type_, body in events:
            # No attempt header on a first delivery: a missing one counts as attempt 1.
            message = self.channel.prepare_message(
                body, content_type="application/json", content_encoding="utf-8",
                properties={"delivery_mode": 2, "message_id": event_id})
            self.channel.basic_publish(message, exchange=topology.EXCHANGE, routing_key=type_, mandatory=True)
            self.published += 1
            self.unconfirmed.add(self.published)
        deadline = time.monotonic() + timeout_s
        while self.unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.unconfirmed)} publisher confirms did not arrive in {timeout_s}s")
            self.conn.drain_events(timeout=remaining)
        if self.failures:
            raise RuntimeError("; ".join(self.failures))

    def close(self) -> None:
        try:
            self.conn.release()
        except Exception:
            pass
