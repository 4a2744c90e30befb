"""Order events in one inbox batch give what they give one by one (on SQLite and on PostgreSQL,
where risk's statements run as DriverStatements)."""
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.risk import domain
from services.risk.models import Decision, Order

from . import batches


@pytest.fixture
def make_db(backend, tmp_path):
    made = []

    def make():  # each a database of its own, both at once (on PostgreSQL a slot each)
        made.append(backend.open_database("risk", tmp_path / f"risk{len(made)}", slot=len(made)))
        return made[-1]
    yield make
    for db in made:
        db.dispose()


def test_a_batch_gives_the_state_of_its_events_one_by_one(make_db):
    batches.check(one_by_one=make_db(), batched=make_db())


def test_an_order_event_again_changes_nothing(make_db):
    db = make_db()
    batches.apply(db, batches.stream(), one_batch=False)
    before = batches.state(db)
    batches.apply(db, [e for e in batches.stream() if e[0].startswith("delivery.order.")], one_batch=True)
    assert batches.state(db) == before


def test_an_order_the_transaction_holds_as_an_object_is_read_afresh(make_db):
    """The payment and delivery are written by statements: an Order object an earlier event of
    the transaction still holds is read again before anything is decided on it."""
    db = make_db()
    events = batches.stream()
    accrued = next(i for i, (type_, _) in enumerate(events) if type_ == "referral.commission.accrued")
    batches.apply(db, events[:accrued + 1], one_batch=False)  # A's line accrued, A not paid yet
    with db.write() as s:
        held = s.get(Order, "A")
        assert held.payer_account is None
        domain.on_order_paid(s, batches._paid("A", 130, "card-9")[1])
        assert s.scalars(select(Decision.subject).where(Decision.kind == "commission")).all() == ["A:u1"]
        domain.on_order_delivered(s, batches._delivered("A", 131, 130)[1])
        domain.on_order_refunded(s, {"order_no": "A"})
        assert (held.payer_account, held.delivered_at, held.refunded) == \
            ("card-9", batches.T0 + timedelta(seconds=131), True)


def test_an_unreadable_time_matters_only_where_the_order_lacks_it(make_db):
    db = make_db()
    batches.apply(db, batches.stream(), one_batch=False)
    before = batches.state(db)
    with db.write() as s:  # A is paid and delivered: the naive times are never read
        domain.on_order_delivered(s, {"order_no": "A", "delivered_at": "2026-05-01T13:00:00",
                                      "paid_at": "2026-05-01T13:00:00"})
    assert batches.state(db) == before
    batches.apply(db, [batches._created("C", 900, "c@example.com", "dev-c", "81.2.70.3")], one_batch=False)
    with pytest.raises(ValueError, match="naive"), db.write() as s:
        domain.on_order_delivered(s, {"order_no": "C", "delivered_at": "2026-05-01T13:00:00"})
    with pytest.raises(domain.NotReady), db.write() as s:
        domain.on_order_delivered(s, {"order_no": "nope", "delivered_at": "2026-05-01T13:00:00"})
