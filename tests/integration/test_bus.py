"""The bus on the real broker: poison messages, retries, duplicates, a worker killed mid-stream.

Messages are injected with pika, not through the code under test."""
from __future__ import annotations

import json
import threading
import time
import uuid

from shared import topology

from .conftest import TEST_ENV
from .helpers import eventually, new_envelope

MAX_ATTEMPTS = int(TEST_ENV["BUS_MAX_ATTEMPTS"])


def _delivered_event(product: dict, quantity: int = 1, id_: str | None = None) -> dict:
    order_no = f"T{uuid.uuid4().hex[:12]}"
    return new_envelope("delivery.order.delivered", {
        "order_no": order_no, "product_id": product["id"], "merchant_id": product["merchant_id"],
        "quantity": quantity, "amount_cents": product["price_cents"] * quantity, "cost_cents": 0,
        "email": "buyer@example.com", "delivered_at": "2026-01-01T00:00:00+00:00"}, id_=id_)


def test_poison_message_lands_in_dead_letter_queue(broker, stack):
    marker = uuid.uuid4().hex
    body = f"not json {marker}".encode()
    # routed by the exchange like any event delivery consumes (so referral and risk get it too)
    broker.publish("catalog.product.upserted", body)
    bad_envelope = json.dumps({"id": "not-a-uuid", "type": "catalog.product.upserted", "marker": marker})
    broker.publish("catalog.product.upserted", bad_envelope)

    dead = topology.dead_queue("delivery")
    found = []

    def both_dead():
        found.extend(broker.take(dead, lambda _props, raw: marker.encode() in raw))
        return len(found) >= 2

    eventually(both_dead, 15, 0.2, "poison messages in delivery.dead")
    bodies = sorted(raw for _p, raw in found)
    assert bodies == sorted([body, bad_envelope.encode()])
    assert broker.counts(topology.inbox_queue("delivery"))[0] == 0
    assert stack.alive("delivery", "worker"), "a poison message must not kill the worker"


def test_failing_handler_is_retried_with_backoff_then_dead_lettered(shop, broker):
    """A handler that raises every time (here: catalog's sale counter given no quantity) is tried
    BUS_MAX_ATTEMPTS times through the TTL retry queues, then parked in catalog.dead."""
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    envelope = _delivered_event(product)
    del envelope["payload"]["quantity"]
    started = time.monotonic()
    broker.publish(topology.inbox_queue("catalog"), envelope, exchange="")
    dead = topology.dead_queue("catalog")
    found = eventually(lambda: broker.take(dead, lambda p, b: envelope["id"].encode() in b), 20, 0.1,
                       "the failing event in catalog.dead")
    elapsed = time.monotonic() - started
    props, _ = found[0]
    assert (props.headers or {}).get("x-linkshop-attempt") == MAX_ATTEMPTS, props.headers
    min_backoff = sum(int(d) for d in TEST_ENV["BUS_RETRY_DELAYS_MS"].split(",")[:MAX_ATTEMPTS - 1]) / 1000
    assert elapsed >= min_backoff * 0.9, f"dead after {elapsed:.2f}s: the retries did not wait"
    assert shop.catalog_product(product["id"])["sold"] == 0


def test_duplicated_event_changes_nothing(shop, broker):
    """The same envelope id twice counts one sale (catalog's sale counter is not idempotent by
    itself: only the inbox stops the second one)."""
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    first = _delivered_event(product, quantity=2)
    later = _delivered_event(product, quantity=1)
    inbox = topology.inbox_queue("catalog")
    broker.publish(inbox, first, exchange="", times=2)
    broker.publish(inbox, first, exchange="")
    broker.publish(inbox, later, exchange="")  # processed after the copies: a marker they are done
    shop.wait_catalog(product["id"], sold=3)
    time.sleep(0.5)
    assert shop.catalog_product(product["id"])["sold"] == 3


def test_consumer_killed_mid_stream_loses_and_duplicates_nothing(stack, shop, broker, workers_running):
    """3,000 sale events wait in the inbox; the catalog worker starts on them and is SIGKILLed
    while handling them (so some were committed but not acked) and restarted: the count ends
    exactly at 3,000. (It works through a thousand in well under a second, so the events are
    queued before it starts, or it would be done before the kill.)"""
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    events = [_delivered_event(product) for _ in range(3000)]
    inbox = topology.inbox_queue("catalog")
    assert stack.stop_worker("catalog")
    broker.publish_many(inbox, events)
    stack.start_worker("catalog")

    def sold():
        return shop.catalog_product(product["id"])["sold"]

    sold_at_kill = eventually(lambda: (n := sold()) >= 20 and n, 20, 0.02, "the worker starts")
    stack.kill_worker("catalog")
    after_kill = sold()
    assert after_kill < len(events), "the worker finished before it was killed: not mid-stream"
    broker.publish_many(inbox, events[:50])  # and copies of events it has already handled
    stack.start_worker("catalog")
    shop.wait_catalog(product["id"], timeout=60, sold=len(events))
    eventually(lambda: broker.counts(inbox)[0] == 0, 10, 0.2, "catalog.inbox drained")
    time.sleep(0.5)
    assert sold() == len(events)
    assert not broker.take(topology.dead_queue("catalog"), lambda p, b: product["id"].encode() in b)
    print(f"killed at {sold_at_kill}..{after_kill} of {len(events)}")


def test_relay_killed_mid_stream_loses_nothing(stack, shop, broker, workers_running):
    """Products are created while catalog's worker (its outbox relay) is SIGKILLed; after the
    restart every product's event is on the broker, and a re-send carries the same envelope id,
    which the consumers' inboxes drop."""
    tap = "it.tap.relay"
    with broker.channel() as ch:
        ch.queue_declare(tap, durable=True)
        ch.queue_bind(tap, topology.EXCHANGE, "catalog.product.upserted")
    try:
        merchant = shop.create_merchant()
        created: list[str] = []
        done = threading.Event()

        def create_all():
            try:
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(8) as pool:
                    for product in pool.map(lambda i: shop.create_product(merchant, title=f"relay {i}"), range(150)):
                        created.append(product["id"])
            finally:
                done.set()

        creator = threading.Thread(target=create_all)
        creator.start()
        eventually(lambda: broker.counts(tap)[0] >= 10, 20, 0.02, "the relay publishes")
        stack.kill_worker("catalog")
        creator.join(60)
        assert done.is_set() and len(created) == 150
        stack.start_worker("catalog")

        seen: dict[str, set[str]] = {}

        def collect():
            for body in broker.drain(tap):
                envelope = json.loads(body)
                seen.setdefault(envelope["payload"]["product_id"], set()).add(envelope["id"])
            return set(created) <= set(seen)

        eventually(collect, 20, 0.2, "every product's event on the broker")
        for product_id in created:
            assert len(seen[product_id]) == 1, f"{product_id} was announced under {len(seen[product_id])} ids"
    finally:
        with broker.channel() as ch:
            ch.queue_delete(tap)


def test_worker_stops_on_sigterm_while_handlers_fail(stack, shop, broker, workers_running):
    """A backlog whose every message fails (a database outage looks like this) must not keep
    the worker from a graceful stop: SIGTERM ends it within seconds, without SIGKILL."""
    merchant = shop.create_merchant()
    product = shop.create_product(merchant)
    events = [_delivered_event(product) for _ in range(400)]
    for event in events:
        del event["payload"]["quantity"]  # catalog's handler raises on every one of them
    inbox = topology.inbox_queue("catalog")
    broker.publish_many(inbox, events)
    eventually(lambda: broker.counts(inbox)[0] < 380, 10, 0.02, "the worker is retrying the backlog")
    started = time.monotonic()
    graceful = stack.stop_worker("catalog", grace=8)
    elapsed = time.monotonic() - started
    # leave no failing backlog behind for the tests that follow
    time.sleep(0.6)  # what waits in the retry queues comes back to the inbox
    ours = product["id"].encode()
    for queue in [inbox, *(topology.retry_queue("catalog", int(d)) for d in TEST_ENV["BUS_RETRY_DELAYS_MS"].split(",")),
                  topology.dead_queue("catalog")]:
        broker.take(queue, lambda _p, body: ours in body)
    assert graceful, f"catalog's worker ignored SIGTERM for {elapsed:.1f}s and had to be killed"
    assert elapsed < 5, f"catalog's worker took {elapsed:.1f}s to stop"
