"""shared.inbox and the MemoryBus: an event's effect is applied exactly once; a failing
handler rolls back its effect and its inbox row so the retry applies it; NotReady retries;
the bus retries, then dead-letters; poison goes straight to <svc>.dead."""
import json

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from shared.bus import MemoryBus
from shared.db import Database
from shared.events import make_envelope
from shared.inbox import Consumer, Handlers, NotReady, inbox_table


class Kit:
    def __init__(self, tmp_path):
        self.metadata = MetaData()
        self.effects = Table("effects", self.metadata, Column("id", Integer, primary_key=True),
                             Column("event_id", String(36)), Column("value", Integer))
        self.inbox = inbox_table(self.metadata)
        self.db = Database(f"sqlite:///{tmp_path / 'inbox.db'}", self.metadata)
        self.db.create_all()
        self.handlers = Handlers()
        self.consumer = Consumer("catalog", self.db, self.inbox, self.handlers)
        self.calls = 0

    def effect_count(self):
        with self.db.read() as s:
            return s.scalar(select(func.count()).select_from(self.effects))

    def inbox_ids(self):
        with self.db.read() as s:
            return set(s.scalars(select(self.inbox.c.event_id)))


@pytest.fixture
def kit(tmp_path):
    k = Kit(tmp_path)
    yield k
    k.db.dispose()


def event(type_="delivery.stock.changed", **payload):
    return make_envelope(type_, payload or {"value": 1}, producer="delivery")


def record_effect(kit, fail_first=0, not_ready_first=0):
    """Register a handler that writes an effect row, failing (after writing) the first N times."""
    state = {"fail": fail_first, "not_ready": not_ready_first}

    @kit.handlers.on("delivery.stock.changed")
    def handler(session, env):
        kit.calls += 1
        session.execute(insert(kit.effects).values(event_id=env["id"], value=env["payload"].get("value")))
        if state["not_ready"]:
            state["not_ready"] -= 1
            raise NotReady("the product is not known yet")
        if state["fail"]:
            state["fail"] -= 1
            raise RuntimeError("handler crashed after writing")
    return handler


def test_an_event_is_processed_once_and_a_duplicate_is_skipped(kit):
    record_effect(kit)
    env = event()
    assert kit.consumer.handle(env) == "processed"
    assert kit.consumer.handle(env) == "duplicate"
    assert kit.consumer.handle(json.loads(json.dumps(env))) == "duplicate"
    assert kit.calls == 1
    assert kit.effect_count() == 1
    assert kit.inbox_ids() == {env["id"]}
    other = event()
    assert kit.consumer.handle(other) == "processed"
    assert kit.effect_count() == 2


def test_a_failing_handler_rolls_back_its_effect_and_its_inbox_row(kit):
    record_effect(kit, fail_first=1)
    env = event()
    with pytest.raises(RuntimeError):
        kit.consumer.handle(env)
    assert kit.effect_count() == 0
    assert kit.inbox_ids() == set()  # so the retry is not mistaken for a duplicate
    assert kit.consumer.handle(env) == "processed"
    assert kit.effect_count() == 1 and kit.calls == 2


def test_not_ready_is_raised_for_a_retry_and_leaves_nothing(kit):
    record_effect(kit, not_ready_first=1)
    env = event()
    with pytest.raises(NotReady):
        kit.consumer.handle(env)
    assert kit.effect_count() == 0 and kit.inbox_ids() == set()
    assert kit.consumer.handle(env) == "processed"
    assert kit.effect_count() == 1


def test_an_event_without_a_handler_is_ignored(kit):
    record_effect(kit)
    assert kit.consumer.handle(event("delivery.order.paid")) == "ignored"
    assert kit.effect_count() == 0 and kit.inbox_ids() == set()


def test_handlers_registry():
    handlers = Handlers()

    @handlers.on("b.x.y")
    def b(session, env):
        pass

    @handlers.on("a.x.y")
    def a(session, env):
        pass

    assert handlers.types == ["a.x.y", "b.x.y"]
    assert handlers.get("a.x.y") is a and handlers.get("c.x.y") is None


# -- through the MemoryBus -----------------------------------------------------------------

def deliver_all(bus, service, consumer, rounds=20):
    for _ in range(rounds):
        if not bus.deliver(service, consumer):
            return


def test_bus_retries_a_failing_handler_until_it_succeeds(kit):
    record_effect(kit, fail_first=2)
    bus = MemoryBus((0,), max_attempts=3)
    bus.publish([event()])
    deliver_all(bus, "catalog", kit.consumer)
    assert kit.calls == 3 and kit.effect_count() == 1
    assert bus.dead["catalog"] == [] and bus.pending("catalog") == 0


def test_bus_dead_letters_after_max_attempts(kit):
    record_effect(kit, fail_first=10)
    bus = MemoryBus((0,), max_attempts=3)
    env = event()
    bus.publish([env])
    deliver_all(bus, "catalog", kit.consumer)
    assert kit.calls == 3  # exactly max_attempts tries
    assert kit.effect_count() == 0
    assert [json.loads(b)["id"] for b in bus.dead["catalog"]] == [env["id"]]
    assert bus.pending("catalog") == 0


def test_bus_retries_not_ready(kit):
    record_effect(kit, not_ready_first=2)
    bus = MemoryBus((0,), max_attempts=3)
    bus.publish([event()])
    deliver_all(bus, "catalog", kit.consumer)
    assert kit.effect_count() == 1 and bus.dead["catalog"] == []


def test_bus_waits_out_the_retry_delay(kit):
    record_effect(kit, fail_first=1)
    bus = MemoryBus((60_000,), max_attempts=3)
    bus.publish([event()])
    assert bus.deliver("catalog", kit.consumer) == 1
    assert bus.pending("catalog") == 1  # queued for a retry ...
    assert bus.deliver("catalog", kit.consumer) == 0  # ... but not due for a minute
    assert kit.calls == 1


@pytest.mark.parametrize("body", [b"{broken", b'{"id": "x"}', json.dumps([1]).encode()])
def test_poison_goes_to_dead_without_reaching_the_handler(kit, body):
    record_effect(kit)
    bus = MemoryBus((0,), max_attempts=3)
    good = event()
    bus.inject("catalog", body)
    bus.publish([good])
    deliver_all(bus, "catalog", kit.consumer)
    assert bus.dead["catalog"] == [body]
    assert kit.calls == 1 and kit.inbox_ids() == {good["id"]}  # the next message still flows


def test_a_duplicated_delivery_changes_nothing(kit):
    record_effect(kit)
    bus = MemoryBus((0,), max_attempts=3)
    env = event()
    bus.publish([env])
    bus.publish([env])
    bus.inject("catalog", json.dumps(env).encode())
    deliver_all(bus, "catalog", kit.consumer)
    assert kit.calls == 1 and kit.effect_count() == 1


def test_publish_routes_only_to_bound_services():
    bus = MemoryBus((0,), 3)
    bus.publish([make_envelope("delivery.order.delivered", {}, producer="delivery"),
                 make_envelope("nobody.listens.here", {}, producer="x")])
    assert {s: bus.pending(s) for s in ("catalog", "delivery", "referral", "payout", "risk")} == \
        {"catalog": 1, "delivery": 1, "referral": 1, "payout": 1, "risk": 1}
    assert bus.ping()


def test_batch_isolates_a_failing_event_and_its_queued_writes(tmp_path):
    """One transaction for the batch; the failing event's outbox rows and inbox row go with it."""
    from sqlalchemy import MetaData, func, select
    from shared.db import Database
    from shared.events import make_envelope
    from shared.inbox import Consumer, Handlers, inbox_table
    from shared.outbox import Outbox

    metadata = MetaData()
    outbox, inbox = Outbox(metadata, "test"), inbox_table(metadata)
    db = Database(f"sqlite:///{tmp_path / 'b.db'}", metadata)
    db.create_all()
    handlers = Handlers()

    @handlers.on("catalog.product.upserted")
    def handler(session, event):
        outbox.add(session, "catalog.product.upserted", {"seen": event["payload"]["n"]})
        if event["payload"]["n"] == 2:
            raise RuntimeError("boom")

    events = [make_envelope("catalog.product.upserted", {"n": n}, producer="x") for n in (1, 2, 3)]
    results = Consumer("test", db, inbox, handlers).handle_batch(events + [events[0]])
    assert results[0] == "processed" and isinstance(results[1], RuntimeError)
    assert results[2] == "processed" and results[3] == "duplicate"
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(inbox)) == 2
        assert s.scalar(select(func.count()).select_from(outbox.table)) == 2
    assert Consumer("test", db, inbox, handlers).handle_batch([events[1]])[0].args == ("boom",)
    db.dispose()


def test_a_healthy_batch_runs_each_fresh_event_once_in_one_pass(kit):
    """The cheap pass: one INSERT for the inbox rows sorts out events seen before and copies
    within the batch; no handler runs twice."""
    record_effect(kit)
    seen_before = event(value=1)
    assert kit.consumer.handle(seen_before) == "processed"
    fresh = [event(value=n) for n in (2, 3)]
    results = kit.consumer.handle_batch([seen_before, fresh[0], fresh[0], fresh[1]])
    assert results == ["duplicate", "processed", "duplicate", "processed"]
    assert kit.calls == 3 and kit.effect_count() == 3
    assert kit.inbox_ids() == {seen_before["id"], fresh[0]["id"], fresh[1]["id"]}


def test_a_failure_in_the_cheap_pass_leaves_only_the_failing_event_undone(kit):
    record_effect(kit, fail_first=2)  # fails in the cheap pass and again in its own savepoint
    batch = [event(value=n) for n in (1, 2, 3)]
    results = kit.consumer.handle_batch(batch)
    assert isinstance(results[0], RuntimeError)
    assert results[1:] == ["processed", "processed"]
    assert kit.effect_count() == 2 and kit.inbox_ids() == {batch[1]["id"], batch[2]["id"]}


def test_prune_forgets_old_event_ids_and_keeps_recent_ones(kit):
    from datetime import timedelta

    from shared.events import utcnow
    from shared.inbox import prune_inbox
    record_effect(kit)
    old, recent = event(value=1), event(value=2)
    kit.consumer.handle(old)
    kit.consumer.handle(recent)
    with kit.db.write() as s:  # as if ``old`` had arrived eight days ago
        s.execute(kit.inbox.update().where(kit.inbox.c.event_id == old["id"])
                  .values(received_at=utcnow() - timedelta(days=8)))
    with kit.db.write() as s:
        assert prune_inbox(s, kit.inbox, utcnow() - timedelta(days=7)) == 1
    assert kit.inbox_ids() == {recent["id"]}
    assert kit.consumer.handle(recent) == "duplicate"  # still recognised within the retention
