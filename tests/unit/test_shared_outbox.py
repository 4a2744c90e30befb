"""shared.outbox: one row per event in the transaction of the change; the relay publishes
unsent rows in order, marks them sent, and leaves them unsent when publishing fails."""
import json

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

from shared.bus import MemoryBus
from shared.db import Database
from shared.events import parse_envelope
from shared.outbox import Outbox, Relay


class RecordingBus:
    def __init__(self, fail_times=0):
        self.fail_times = fail_times
        self.batches = []

    def publish_serialized(self, events):
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("broker down")
        for event_id, type_, body in events:
            envelope = json.loads(body)
            assert (envelope["id"], envelope["type"]) == (event_id, type_)
        self.batches.append([json.loads(body) for _, _, body in events])

    @property
    def published(self):
        return [e for batch in self.batches for e in batch]


@pytest.fixture
def kit(tmp_path):
    metadata = MetaData()
    things = Table("things", metadata, Column("id", Integer, primary_key=True), Column("name", String(20)))
    outbox = Outbox(metadata, producer="catalog")
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}", metadata)
    db.create_all()
    yield db, outbox, things
    db.dispose()


def rows(db, outbox):
    t = outbox.table
    with db.read() as s:
        return s.execute(select(t.c.id, t.c.event_id, t.c.type, t.c.body, t.c.sent_at).order_by(t.c.id)).all()


def test_an_event_row_is_written_with_the_change(kit):
    db, outbox, things = kit
    with db.write() as s:
        s.execute(insert(things).values(id=1, name="a"))
        env = outbox.add(s, "catalog.product.upserted", {"product_id": "p1"}, correlation_id="p1")
    [row] = rows(db, outbox)
    assert row.event_id == env["id"] and row.type == "catalog.product.upserted"
    assert row.sent_at is None
    body = json.loads(row.body)
    assert body == env and parse_envelope(row.body) == env
    assert body["producer"] == "catalog" and body["correlation_id"] == "p1"


def test_a_rolled_back_transaction_leaves_no_event(kit):
    db, outbox, things = kit
    with pytest.raises(RuntimeError):
        with db.write() as s:
            s.execute(insert(things).values(id=1, name="a"))
            outbox.add(s, "catalog.product.upserted", {"product_id": "p1"})
            raise RuntimeError("validation failed after the event was added")
    assert rows(db, outbox) == []
    with db.read() as s:
        assert s.scalar(select(things.c.id)) is None
        assert outbox.pending_count(s) == 0


def add_events(db, outbox, n, start=0):
    ids = []
    for i in range(start, start + n):
        with db.write() as s:
            ids.append(outbox.add(s, "catalog.product.upserted", {"seq": i})["id"])
    return ids


def test_relay_publishes_in_order_and_marks_sent(kit):
    db, outbox, _ = kit
    ids = add_events(db, outbox, 5)
    bus = RecordingBus()
    relay = Relay(db, outbox, bus)
    assert relay.run_once() == 5
    assert [e["id"] for e in bus.published] == ids
    assert [e["payload"]["seq"] for e in bus.published] == [0, 1, 2, 3, 4]
    assert all(r.sent_at is not None and r.sent_at.tzinfo is not None for r in rows(db, outbox))
    assert relay.run_once() == 0  # nothing is sent twice
    assert len(bus.published) == 5
    with db.read() as s:
        assert outbox.pending_count(s) == 0
    relay.refresh_gauge()


def test_relay_batches_keep_the_order(kit):
    db, outbox, _ = kit
    ids = add_events(db, outbox, 5)
    bus = RecordingBus()
    relay = Relay(db, outbox, bus, batch=2)
    assert [relay.run_once() for _ in range(4)] == [2, 2, 1, 0]
    assert [len(b) for b in bus.batches] == [2, 2, 1]
    assert [e["id"] for e in bus.published] == ids


def test_a_publish_failure_leaves_rows_unsent_and_they_go_out_later(kit):
    db, outbox, _ = kit
    ids = add_events(db, outbox, 3)
    bus = RecordingBus(fail_times=1)
    relay = Relay(db, outbox, bus)
    with pytest.raises(ConnectionError):
        relay.run_once()
    assert all(r.sent_at is None for r in rows(db, outbox))
    with db.read() as s:
        assert outbox.pending_count(s) == 3
    ids += add_events(db, outbox, 1, start=3)
    assert relay.run_once() == 4
    assert [e["id"] for e in bus.published] == ids  # nothing lost, nothing reordered


def test_relay_routes_through_the_memory_bus_by_topology(kit):
    db, outbox, _ = kit
    with db.write() as s:
        outbox.add(s, "catalog.merchant.upserted", {"merchant_id": "m1"})
        outbox.add(s, "catalog.product.upserted", {"product_id": "p1"})
    bus = MemoryBus((0,), 3)
    assert Relay(db, outbox, bus).run_once() == 2
    # merchant -> delivery, referral, payout; product -> delivery, referral, risk
    assert {svc: bus.pending(svc) for svc in ("catalog", "delivery", "referral", "payout", "risk")} == \
        {"catalog": 0, "delivery": 2, "referral": 2, "payout": 1, "risk": 1}


def test_prune_forgets_only_rows_sent_before_the_cutoff(kit):
    from datetime import timedelta

    from shared.events import utcnow
    db, outbox, _ = kit
    with db.write() as s:
        for n in range(5):
            outbox.add(s, "catalog.product.upserted", {"n": n})
    Relay(db, outbox, RecordingBus(), batch=3).run_once()  # three sent, two still waiting
    with db.write() as s:
        assert outbox.prune(s, utcnow() - timedelta(hours=1)) == 0  # sent just now: kept
    with db.write() as s:
        assert outbox.prune(s, utcnow() + timedelta(seconds=1), limit=2) == 2
    with db.write() as s:
        assert outbox.prune(s, utcnow() + timedelta(seconds=1)) == 1
    with db.read() as s:
        assert outbox.pending_count(s) == 2
        assert s.scalar(select(outbox.table.c.id).where(outbox.table.c.sent_at.is_not(None))) is None


def test_a_commit_with_outbox_rows_wakes_the_relay_and_a_rollback_does_not(kit):
    from shared.outbox import relay_wanted
    db, outbox, _ = kit
    relay_wanted.clear()
    with pytest.raises(RuntimeError):
        with db.write() as s:
            outbox.add(s, "catalog.product.upserted", {"n": 1})
            raise RuntimeError("the change failed")
    assert not relay_wanted.is_set()
    with db.write() as s:
        outbox.add(s, "catalog.product.upserted", {"n": 2})
        outbox.add(s, "catalog.product.upserted", {"n": 3})
    assert relay_wanted.is_set()
