"""catalog over the real broker: its events reach the queues bound for them (checked with pika)."""
from __future__ import annotations

import json

import pika
import pytest

from shared import topology

from .conftest import TEST_ENV
from .helpers import eventually

RETRY_DELAYS = [int(d) for d in TEST_ENV["BUS_RETRY_DELAYS_MS"].split(",")]


def test_topology_is_declared_on_the_broker(broker):
    assert broker.exchange_exists(topology.EXCHANGE)
    for svc in topology.CONSUMES:
        for queue in [topology.inbox_queue(svc), topology.dead_queue(svc),
                      *(topology.retry_queue(svc, d) for d in RETRY_DELAYS)]:
            assert broker.queue_exists(queue), f"{queue} is missing on the broker"
        assert broker.counts(topology.inbox_queue(svc))[1] >= 1, f"nobody consumes {svc}.inbox"
    # Re-declaring with the arguments the design asks for succeeds only if the queue has exactly
    # them: the inbox is a quorum queue whose rejects dead-letter to <svc>.dead.
    with broker.channel() as ch:
        ch.queue_declare(topology.inbox_queue("delivery"), durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": topology.DELIVERY_LIMIT,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": topology.dead_queue("delivery")})
    with broker.channel() as ch:  # and a wrong argument is refused, so the check above means something
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.queue_declare(topology.inbox_queue("delivery"), durable=True, arguments={"x-queue-type": "classic"})
        assert refused.value.reply_code == 406


def test_product_upsert_is_routed_to_delivery_inbox(stack, shop, broker, workers_running):
    """With delivery's worker stopped, the event waits in delivery.inbox: catalog's outbox relay
    published it to linkshop.events and the broker routed it through delivery's binding."""
    stack.stop_worker("delivery")
    inbox = topology.inbox_queue("delivery")
    merchant = shop.create_merchant()
    product = shop.create_product(merchant, title="Routed", price_cents=1234)

    def ours(props, body):
        envelope = json.loads(body)
        return envelope["type"] == "catalog.product.upserted" and envelope["payload"]["product_id"] == product["id"]

    def find():
        return [json.loads(body) for props, body in broker.peek(inbox) if ours(props, body)]

    found = eventually(find, 10, 0.2, "catalog.product.upserted in delivery.inbox")
    envelope = found[0]
    assert envelope["producer"] == "catalog"
    assert envelope["version"] == 1
    assert envelope["payload"]["price_cents"] == 1234
    assert envelope["payload"]["merchant_id"] == merchant["id"]
    assert len(found) == 1, "published twice"
    ready, consumers = broker.counts(inbox)
    assert ready >= 2 and consumers == 0  # the merchant event too, and nobody took them

    stack.start_worker("delivery")
    eventually(lambda: broker.counts(inbox)[0] == 0, 10, 0.2, "delivery's worker drains its inbox")
    # catalog does not consume its own events
    assert not [b for _p, b in broker.peek(topology.inbox_queue("catalog")) if ours(None, b)]
