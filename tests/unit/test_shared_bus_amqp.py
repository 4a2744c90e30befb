"""AmqpBus's per-message decisions, with fake kombu messages (no broker): ack after the
handler commits; a failure goes to the retry queue for its attempt with the attempt counted;
the last attempt and poison are rejected so RabbitMQ dead-letters them to <svc>.dead."""
import json

import pytest

from shared.bus import ATTEMPT_HEADER, AmqpBus, _retry_delay, make_bus, MemoryBus
from shared.config import load_settings
from shared.events import make_envelope


class FakeChannel:
    """Settles deliveries like RabbitMQ: ``multiple`` acks every unsettled tag up to the one given."""

    def __init__(self):
        self.deliveries = []
        self.acks = []

    def basic_ack(self, tag, multiple=False):
        self.acks.append((tag, multiple))
        for message in self.deliveries:
            if message.delivery_tag == tag or (multiple and message.delivery_tag < tag):
                assert not message.settled, f"tag {message.delivery_tag} settled twice"
                message.acked = True


class FakeMessage:

    def __init__(self, body, headers=None, channel=None):
        self.body = body
        self.headers = headers
        self.acked = self.rejected = False
        self.requeue = None
        self.channel = channel or FakeMessage.shared
        self.channel.deliveries.append(self)
        self.delivery_tag = len(self.channel.deliveries)

    @property
    def settled(self):
        return self.acked or self.rejected

    def ack(self):
        assert not self.settled
        self.acked = True

    def reject(self, requeue=False):
        assert not self.settled
        self.rejected, self.requeue = True, requeue


@pytest.fixture(autouse=True)
def fresh_channel():
    FakeMessage.shared = FakeChannel()
    yield FakeMessage.shared


class FakeProducer:
    def __init__(self):
        self.sent = []

    def publish(self, body, **kwargs):
        self.sent.append((body, kwargs))


class FakeConsumer:
    def __init__(self, fail=False):
        self.fail = fail
        self.seen = []

    def handle_batch(self, envelopes):
        results = []
        for envelope in envelopes:
            self.seen.append(envelope["id"])
            fails = self.fail is True or (self.fail and envelope["id"] in self.fail)
            results.append(RuntimeError("handler failed") if fails else "processed")
        return results


@pytest.fixture
def bus():
    return AmqpBus("amqp://guest:guest@127.0.0.1:5672//", retry_delays_ms=(100, 1000), max_attempts=3)


def body():
    return json.dumps(make_envelope("delivery.order.delivered", {"order_no": "A"}, producer="delivery"))


def test_success_is_acked(bus):
    message, producer, consumer = FakeMessage(body()), FakeProducer(), FakeConsumer()
    bus._on_messages("payout", consumer, producer, [message])
    assert message.acked and not message.rejected and producer.sent == []
    assert len(consumer.seen) == 1


def test_poison_is_rejected_without_requeue(bus):
    message, producer, consumer = FakeMessage(b"{not json"), FakeProducer(), FakeConsumer()
    bus._on_messages("payout", consumer, producer, [message])
    assert message.rejected and message.requeue is False and not message.acked
    assert consumer.seen == [] and producer.sent == []


@pytest.mark.parametrize("attempt,queue", [(None, "payout.retry.100"), (1, "payout.retry.100"),
                                           (2, "payout.retry.1000")])
def test_a_failure_is_republished_to_the_retry_queue_then_acked(bus, attempt, queue):
    headers = {ATTEMPT_HEADER: attempt, "x-death": [{"count": 1}]} if attempt else None
    raw = body()
    message, producer = FakeMessage(raw, headers), FakeProducer()
    bus._on_messages("payout", FakeConsumer(fail=True), producer, [message])
    assert message.acked and not message.rejected
    [(sent, kwargs)] = producer.sent
    assert sent == raw
    assert kwargs["exchange"] == "" and kwargs["routing_key"] == queue
    assert kwargs["headers"][ATTEMPT_HEADER] == (attempt or 1) + 1
    assert "x-death" not in kwargs["headers"]
    assert kwargs["delivery_mode"] == 2 and kwargs["message_id"] == json.loads(raw)["id"]


def test_the_last_attempt_is_dead_lettered(bus):
    message, producer = FakeMessage(body(), {ATTEMPT_HEADER: 3}), FakeProducer()
    bus._on_messages("payout", FakeConsumer(fail=True), producer, [message])
    assert message.rejected and message.requeue is False and not message.acked
    assert producer.sent == []


def test_retry_delays_step_up_and_stay_at_the_last():
    assert [_retry_delay((1000, 5000, 30000), a) for a in (1, 2, 3, 4, 9)] == [1000, 5000, 30000, 30000, 30000]
    assert _retry_delay((), 3) == 0


def test_make_bus_picks_the_transport(tmp_path):
    embedded = load_settings("catalog", {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_RETRY_DELAYS_MS": "0",
                                         "BUS_MAX_ATTEMPTS": "4"})
    memory = make_bus(embedded)
    assert isinstance(memory, MemoryBus) and memory.max_attempts == 4
    real = load_settings("catalog", {"LINKSHOP_VAR_DIR": str(tmp_path), "BUS_URL": "amqp://x//",
                                     "LINKSHOP_ADMIN_TOKEN": "a", "LINKSHOP_VAULT_KEY": "v",
                                     "LINKSHOP_TOKEN_SECRET": "t"})
    assert isinstance(make_bus(real), AmqpBus)


def test_a_batch_acks_what_committed_and_retries_only_what_failed(bus):
    first, second = body(), body()
    failing_id = json.loads(second)["id"]
    messages = [FakeMessage(first), FakeMessage(second), FakeMessage(b"not json")]
    producer, consumer = FakeProducer(), FakeConsumer(fail={failing_id})
    bus._on_messages("payout", consumer, producer, messages)
    assert messages[0].acked and not messages[0].rejected
    assert messages[1].acked and len(producer.sent) == 1  # re-published to the retry queue, then acked
    assert producer.sent[0][1]["routing_key"] == "payout.retry.100"
    assert messages[2].rejected and not messages[2].acked
    assert len(consumer.seen) == 2


def test_a_healthy_batch_is_acked_with_one_multiple_ack(bus, fresh_channel):
    messages = [FakeMessage(body()) for _ in range(5)]
    bus._on_messages("payout", FakeConsumer(), FakeProducer(), messages)
    assert all(m.acked for m in messages)
    assert fresh_channel.acks == [(5, True)]


def test_the_batch_ack_never_settles_a_failed_message_twice(bus, fresh_channel):
    bodies = [body() for _ in range(4)]
    failing = {json.loads(bodies[3])["id"]}  # the last one fails: the batch ack stops before it
    messages = [FakeMessage(b) for b in bodies]
    producer = FakeProducer()
    bus._on_messages("payout", FakeConsumer(fail=failing), producer, messages)
    assert all(m.acked for m in messages) and len(producer.sent) == 1
    assert fresh_channel.acks == [(3, True)]
