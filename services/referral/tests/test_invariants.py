"""Design §8 invariants 5 (commission never past the margin or the level cap) and 4 (any
order of the same events, with duplicates, ends in the same state), for referral."""
import random
from datetime import timedelta

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select

from services.referral import binding
from services.referral.events import handlers
from services.referral.models import Attribution, CommissionLine, inbox
from shared.events import make_envelope, utcnow
from shared.inbox import Consumer, NotReady

rules = st.fixed_dictionaries({
    "levels_bps": st.lists(st.integers(0, 3000), min_size=0, max_size=3),
    "cap_bps": st.one_of(st.none(), st.integers(0, 10000)),
})
orders = st.lists(st.fixed_dictionaries({
    "buyer": st.integers(0, 7), "ref": st.one_of(st.none(), st.integers(0, 7)), "logged_in": st.booleans(),
    "quantity": st.integers(1, 4), "unit": st.integers(1, 20000), "cost_share": st.integers(0, 100),
    "fee_bps": st.integers(0, 3000), "rule": rules,
    "refunds": st.lists(st.integers(1, 4), max_size=3),
    "flag": st.one_of(st.none(), st.integers(0, 7)), "clear": st.booleans(), "released": st.booleans(),
}), min_size=1, max_size=6)


def _world(backend, tmp_path, parents):
    db = backend.open_database("referral", tmp_path)
    users = []
    with db.write() as s:
        for i, parent in enumerate(parents):
            code = users[parent].invite_code if parent is not None and parent < len(users) else None
            users.append(binding.register(s, f"u{i}@example.com", code, {}, utcnow()))
    return db, [u.id for u in users], [u.invite_code for u in users]


def _events(order_specs, user_ids, codes):
    events, t0 = [], utcnow()
    for n, o in enumerate(order_specs):
        no = f"ORD{n:04d}"
        amount = o["unit"] * o["quantity"]
        delivered = {"order_no": no, "product_id": "prd_1", "merchant_id": "mer_1", "quantity": o["quantity"],
                     "amount_cents": amount, "cost_cents": amount * o["cost_share"] // 100, "fee_bps": o["fee_bps"],
                     "commission": o["rule"], "buyer_user_id": user_ids[o["buyer"]] if o["logged_in"] else None,
                     "ref_code": codes[o["ref"]] if o["ref"] is not None else None}
        events.append(make_envelope("delivery.order.delivered", delivered, producer="delivery"))
        total = 0
        for q in o["refunds"]:
            if total + q > o["quantity"]:
                break
            total += q
            events.append(make_envelope("delivery.order.refunded", {
                "order_no": no, "quantity": q, "delivered": True, "total_refunded_quantity": total,
                "amount_cents": 0}, producer="delivery"))
        if o["flag"] is not None:
            flagged = make_envelope("risk.commission.flagged", {"order_no": no, "user_id": user_ids[o["flag"]],
                                                                "reason": "shared device"}, producer="risk")
            flagged["occurred_at"] = (t0 + timedelta(seconds=n * 10 + 1)).isoformat()
            events.append(flagged)
            if o["clear"]:
                cleared = make_envelope("risk.commission.cleared", {"order_no": no, "user_id": user_ids[o["flag"]]},
                                        producer="risk")
                cleared["occurred_at"] = (t0 + timedelta(seconds=n * 10 + 2)).isoformat()
                events.append(cleared)
        if o["released"]:
            events.append(make_envelope("payout.settlement.released", {"order_no": no}, producer="payout"))
    return events


def _apply_all(db, events):
    consumer = Consumer("referral", db, inbox, handlers)
    pending = list(events)
    for _ in range(len(events) * len(events) + 10):
        if not pending:
            return
        envelope = pending.pop(0)
        try:
            consumer.handle(envelope)
        except NotReady:
            pending.append(envelope)
    raise AssertionError("events never became ready")


def _state(db):
    with db.read() as s:
        return sorted((l.order_no, l.level, l.user_id, l.rate_bps, l.amount_cents, l.reversed_cents, l.status)
                      for l in s.scalars(select(CommissionLine)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parents=st.lists(st.one_of(st.none(), st.integers(0, 7)), min_size=8, max_size=8), order_specs=orders,
       seed=st.integers(0, 2**32))
def test_commission_invariants(backend, tmp_path_factory, parents, order_specs, seed):
    db, user_ids, codes = _world(backend, tmp_path_factory.mktemp("a"), parents)
    events = _events(order_specs, user_ids, codes)
    _apply_all(db, events)
    in_order = _state(db)

    with db.read() as s:
        for att in s.scalars(select(Attribution)):
            lines = s.scalars(select(CommissionLine).where(CommissionLine.order_no == att.order_no)).all()
            margin = max(0, att.amount_cents - att.fee_cents - att.cost_cents)
            # 5: never more than the margin (nor its cap), never past the level cap, never the buyer
            assert sum(l.amount_cents for l in lines) <= att.limit_cents <= margin
            assert all(l.level <= min(3, len(att.levels_bps)) for l in lines)
            assert all(l.user_id != att.buyer_user_id for l in lines)
            assert all(0 <= l.reversed_cents <= l.amount_cents <= l.uncapped_cents for l in lines)
            assert all(l.uncapped_cents == att.amount_cents * l.rate_bps // 10000 for l in lines)

    # 4: shuffled, with every event delivered twice, into a second copy of the same world
    rng = random.Random(seed)
    shuffled = events + [rng.choice(events) for _ in range(len(events))]
    rng.shuffle(shuffled)
    db2, user_ids2, codes2 = _world(backend, tmp_path_factory.mktemp("b"), parents)
    remap = dict(zip(user_ids + codes, user_ids2 + codes2))

    def translate(value):
        if isinstance(value, dict):
            return {k: translate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [translate(v) for v in value]
        return remap.get(value, value) if isinstance(value, str) else value

    _apply_all(db2, [translate(e) for e in shuffled])
    back = {v: k for k, v in remap.items()}
    assert sorted(tuple(back.get(x, x) if isinstance(x, str) else x for x in row) for row in _state(db2)) == in_order
    db.dispose()
    db2.dispose()
