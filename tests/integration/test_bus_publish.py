"""The relay's publisher on the real broker: a batch goes out with every confirm awaited,
in order, once; an event type no queue is bound to is counted and does not block the rest.

The test publishes to an exchange of its own (the suite's tap queue takes every type on the
real one, so nothing would be unroutable there) and reads back with pika."""
from __future__ import annotations

import json
import uuid

from shared import topology
from shared.bus import AmqpBus
from shared.events import make_envelope


def test_a_batch_is_confirmed_in_order_and_an_unroutable_type_does_not_block_it(broker, monkeypatch):
    tag = uuid.uuid4().hex[:10]
    routed, nobody = f"it.publish.{tag}", f"it.nobody.{tag}"
    queue = exchange = f"it.publish.{tag}"
    with broker.channel() as ch:
        ch.exchange_declare(exchange, "topic", durable=False)
        ch.queue_declare(queue, durable=False, auto_delete=False)
        ch.queue_bind(queue, exchange, routing_key=routed)
    monkeypatch.setattr(topology, "EXCHANGE", exchange)
    bus = AmqpBus(broker.url)
    try:
        batch = [make_envelope(routed, {"n": n}, producer="it") for n in range(50)]
        bus.publish(batch[:25] + [make_envelope(nobody, {"n": -1}, producer="it")] + batch[25:])
        assert bus.unroutable == 1
        bus.publish([make_envelope(routed, {"n": 50}, producer="it")])  # the channel is still good

        with broker.channel() as ch:
            received = []
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                received.append((props, json.loads(body)))
            ch.queue_delete(queue)
            ch.exchange_delete(exchange)
        assert [envelope["payload"]["n"] for _, envelope in received] == list(range(51))
        props, first = received[0]
        assert props.message_id == first["id"] and props.delivery_mode == 2
        assert props.content_type == "application/json"
    finally:
        bus.close_publisher()
