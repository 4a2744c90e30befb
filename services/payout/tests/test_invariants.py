"""Design §8 invariants 3, 4, 6 and 7 for the ledger, driven by hypothesis.

Random orders (amount, fee, up to three commission lines, partial and full refunds with
referral's matching reversals, risk flags that stay, clear or end in a rejection) become
the events payout consumes. World A applies them in a random order with duplicates,
interleaved with release runs on a clock that only moves forward, withdrawal requests,
policy decisions, payments and rejections; after every step it checks:

  3  the chain verifies, every entry and the whole ledger sum to zero, cached balances match,
     and every order's split (clearing left out) is its amount minus what was refunded;
  6  no posting reaches an available account for an order whose hold has not ended, and a
     withdrawal is accepted exactly when amount + fee fits in what is available;
  -  what is reserved equals the withdrawals still in flight.

At the end both worlds are compared with a model computed from the events alone (no
database): every account's balance, exactly. World B gets the same events shuffled again
and duplicated, without withdrawals (4). In the model a refunded part of an order simply
does not exist, so a fully refunded order contributes nothing anywhere; where the account
paid money out in the meantime, its available balance is negative, a debt, and only there (7).
"""
import random
import uuid
from collections import defaultdict
from datetime import timedelta

from hypothesis import HealthCheck, event, given, settings, strategies as st
from sqlalchemy import func, select

from shared.errors import DomainError
from services.payout import domain, ledger
from services.payout.config import PayoutConfig
from services.payout.events import build_handlers
from services.payout.models import Account, PayoutOrder, Posting, Withdrawal, inbox
from shared.events import make_envelope, utcnow
from shared.inbox import Consumer, NotReady

HOLD = 7 * 24 * 3600
USERS = [f"usr_{i}" for i in range(4)]
MERCHANTS = ["mer_0", "mer_1"]
CLEARING = "provider:sandbox:clearing"

orders_st = st.lists(st.fixed_dictionaries({
    "q": st.integers(1, 4),
    "unit": st.integers(100, 20000),
    "fee_bps": st.integers(0, 3000),
    "rates": st.lists(st.integers(0, 1500), max_size=3),
    "earners": st.permutations(range(4)),
    "refunds": st.lists(st.integers(1, 4), max_size=3),
    "offset": st.integers(0, 4),  # delivered at t0 + offset * hold / 2
    "flag": st.one_of(st.none(), st.tuples(st.integers(1, 3), st.sampled_from(["stay", "clear", "reject"]))),
}), min_size=1, max_size=5)


def _cfg():
    return PayoutConfig(hold_seconds=HOLD, refund_window_seconds=HOLD, withdrawal_fee_bps=100,
                        withdrawal_min_fee_cents=50, withdrawal_min_cents=100, auto_approve_cents=3000)


def _db(backend, path):
    return backend.open_database("payout", path)


def _build(specs, t0):
    """The events of every order, and the final state they imply (the model)."""
    events, model = [], defaultdict(int)
    for n, o in enumerate(specs):
        no, merchant = f"ORD{n:03d}", MERCHANTS[n % 2]
        q, amount = o["q"], o["unit"] * o["q"]
        fee = amount * o["fee_bps"] // 10000
        delivered_at = t0 + timedelta(seconds=o["offset"] * HOLD // 2)
        events.append(make_envelope("delivery.order.delivered", {
            "order_no": no, "product_id": "prd", "merchant_id": merchant, "quantity": q, "amount_cents": amount,
            "cost_cents": 0, "currency": "CNY", "fee_bps": o["fee_bps"], "delivered_at": delivered_at.isoformat()},
            producer="delivery"))
        lines, room = [], (amount - fee) * 2 // 5
        for level, rate in enumerate(o["rates"], start=1):
            cents = min(amount * rate // 10000, room)
            room -= cents
            if cents > 0:
                lines.append({"user_id": USERS[o["earners"][level - 1]], "level": level, "rate_bps": rate,
                              "amount_cents": cents})
        if lines:
            events.append(make_envelope("referral.commission.accrued", {
                "order_no": no, "merchant_id": merchant, "product_id": "prd", "buyer_user_id": None,
                "amount_cents": amount, "lines": lines}, producer="referral"))
        reversed_ = defaultdict(int)
        total_q = 0
        for step in o["refunds"]:
            if total_q + step > q:
                break
            prev_q, total_q = total_q, total_q + step
            total = amount * total_q // q
            events.append(make_envelope("delivery.order.refunded", {
                "order_no": no, "refund_id": len(events), "product_id": "prd", "merchant_id": merchant,
                "amount_cents": total - amount * prev_q // q, "quantity": step, "currency": "CNY", "reason": "r",
                "delivered": True, "total_refunded_cents": total, "total_refunded_quantity": total_q},
                producer="delivery"))
            deltas = [{**l, "amount_cents": l["amount_cents"] * total_q // q - l["amount_cents"] * prev_q // q}
                      for l in lines]
            deltas = [d for d in deltas if d["amount_cents"] > 0]
            if deltas:
                events.append(make_envelope("referral.commission.reversed",
                                            {"order_no": no, "lines": deltas, "reason": "refund"}, producer="referral"))
            for d in deltas:
                reversed_[d["level"]] += d["amount_cents"]
        flagged = set()
        if o["flag"] is not None:
            level, outcome = o["flag"]
            user = USERS[o["earners"][level - 1]]
            at = t0 + timedelta(seconds=10 * n + 1)
            flag = make_envelope("risk.commission.flagged", {"order_no": no, "user_id": user, "reason": "device"},
                                 producer="risk")
            flag["occurred_at"] = at.isoformat()
            events.append(flag)
            if outcome == "clear":
                clear = make_envelope("risk.commission.cleared", {"order_no": no, "user_id": user}, producer="risk")
                clear["occurred_at"] = (at + timedelta(seconds=1)).isoformat()
                events.append(clear)
            else:
                flagged.add(user)
            line = next((l for l in lines if l["user_id"] == user), None)
            if outcome == "reject" and line is not None:
                events.append(make_envelope("referral.commission.reversed", {
                    "order_no": no, "lines": [{**line}], "reason": "rejected"}, producer="referral"))
                reversed_[line["level"]] += line["amount_cents"]
        # the model: what every account holds in the end, from this order
        refunded = amount * total_q // q
        fee_back = fee * refunded // amount
        model[CLEARING] -= amount - refunded
        model["platform:fees"] += fee - fee_back
        merchant_part = (amount - fee) - (refunded - fee_back)
        for l in lines:
            left = l["amount_cents"] - min(l["amount_cents"], reversed_[l["level"]])
            merchant_part -= left
            where = "pending" if l["user_id"] in flagged else "available"
            model[f"user:{l['user_id']}:{where}"] += left
        model[f"merchant:{merchant}:available"] += merchant_part
    return events, model


def ledger_kind():
    from services.payout.models import Entry
    return Entry.kind.distinct()


def _balances(db):
    with db.read() as s:
        return {name: int(b) for name, b in s.execute(select(Account.name, Account.balance_cents)) if b}


def _check(db, clock):
    """Invariants 3 and 6 (and the reservations), after one step."""
    with db.read() as s:
        report = ledger.verify(s)
        assert report["ok"], report
        for order in s.scalars(select(PayoutOrder)):
            settled = s.scalar(select(func.coalesce(func.sum(Posting.amount_cents), 0)).where(
                Posting.order_no == order.order_no, Posting.account != CLEARING))
            assert settled == order.amount_cents - order.refunded_cents, order.order_no
            assert 0 <= order.refunded_cents <= order.amount_cents
            if order.hold_until > clock:
                early = s.scalar(select(func.count()).select_from(Posting).where(
                    Posting.order_no == order.order_no, Posting.account.like("%:available")))
                assert early == 0, f"{order.order_no} reached available before its hold ended"
        in_flight = defaultdict(int)
        for w in s.scalars(select(Withdrawal).where(Withdrawal.status.in_(["requested", "review", "approved"]))):
            in_flight[w.account] += w.amount_cents + w.fee_cents
        reserved = {n: int(r) for n, r in s.execute(select(Account.name, Account.reserved_cents)) if r}
        assert reserved == dict(in_flight)


def _republished(events, rng):
    """Copies under a new event id (a producer that published twice): delivered, accrued,
    refunded and risk events say the same thing again and must change nothing. Reversals
    carry deltas, not totals, so they are deduplicated by their event id alone."""
    copies = []
    for e in events:
        if e["type"] != "referral.commission.reversed" and rng.random() < 0.3:
            copies.append({**e, "id": str(uuid.uuid4())})
    return copies


def _consume(consumer, queue):
    """Apply the first event that is ready; NotReady ones go to the back (the bus's retry)."""
    for _ in range(len(queue)):
        envelope = queue.pop(0)
        try:
            consumer.handle(envelope)
            return
        except NotReady:
            queue.append(envelope)
    raise AssertionError("no event is ready: " + ", ".join(e["type"] for e in queue))


def _release(db, at):
    with db.write() as s:
        domain.release_due(s, at, limit=1000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=orders_st, seed=st.integers(0, 2**32))
def test_ledger_invariants(backend, tmp_path_factory, specs, seed):
    rng, cfg, t0 = random.Random(seed), _cfg(), utcnow()
    events, model = _build(specs, t0)
    end = t0 + timedelta(seconds=4 * HOLD)

    # -- world A: one random order, duplicates, releases, withdrawals ---------------------------
    db = _db(backend, tmp_path_factory.mktemp("a"))
    consumer = Consumer("payout", db, inbox, build_handlers(cfg))
    queue = events + [rng.choice(events) for _ in range(len(events) // 2)] + _republished(events, rng)
    rng.shuffle(queue)
    clock, paid = t0, defaultdict(int)
    while queue:
        roll = rng.random()
        if roll < 0.45:
            _consume(consumer, queue)
        elif roll < 0.6:
            clock += timedelta(seconds=rng.randrange(0, 2 * HOLD))
            _release(db, clock)
        elif roll < 0.85:
            owner = rng.choice([f"user:{u}" for u in USERS] + [f"merchant:{m}" for m in MERCHANTS])
            with db.read() as s:
                free = domain.spendable(s, owner)
            # mostly near what is there (some just over it), sometimes anything
            amount = max(1, int(free * rng.uniform(0.3, 1.05))) if free > 0 and rng.random() < 0.8 \
                else rng.randrange(1, 40000)
            total = amount + cfg.withdrawal_fee(amount)
            try:
                with db.write() as s:
                    domain.request_withdrawal(s, cfg, owner, amount, "dest-1", "h" * 64, clock)
                accepted = True
            except DomainError as refused:
                accepted = False
                assert refused.code in ("below_minimum", "account_in_debt", "insufficient_funds")
            # 6: accepted exactly when it fits in what is available, never into a debt
            assert accepted == (amount >= cfg.withdrawal_min_cents and free >= 0 and total <= free), \
                (owner, amount, total, free)
        else:
            with db.write() as s:
                if rng.random() < 0.3:
                    waiting = s.scalars(select(Withdrawal).where(
                        Withdrawal.status.in_(["requested", "review", "approved"]))).all()
                    if waiting:
                        domain.reject(s, rng.choice(waiting), "admin", clock)
                domain.decide_by_policy(s, cfg, clock)
                domain.pay_approved(s, cfg, clock)
        _check(db, clock)
    with db.write() as s:  # the operator approves what waits; the provider pays it
        for w in s.scalars(select(Withdrawal).where(Withdrawal.status.in_(["requested", "review"]))):
            domain.approve(s, w, "admin", clock)
        domain.pay_approved(s, cfg, clock)
    _release(db, end)
    _check(db, end)
    expected_a = defaultdict(int, model)
    with db.read() as s:
        for w in s.scalars(select(Withdrawal).where(Withdrawal.status == "paid")):
            paid[w.account] += w.amount_cents + w.fee_cents
            expected_a[w.account] -= w.amount_cents + w.fee_cents
            expected_a["payouts:sandbox"] += w.amount_cents
            expected_a["platform:withdrawal_fees"] += w.fee_cents
        kinds = set(s.scalars(select(ledger_kind())))
    assert _balances(db) == {k: v for k, v in expected_a.items() if v}
    # 7: a debt only where money was paid out, and never more than what was paid out
    debts = [(name, cents) for name, cents in _balances(db).items() if name.endswith(":available") and cents < 0]
    for name, cents in debts:
        assert paid[name] > 0 and -cents <= paid[name], name
    for label in sorted(kinds) + (["debt"] if debts else []) + (["paid withdrawal"] if paid else []):
        event(label)

    # -- world B: shuffled again, every event at least once and some twice; no withdrawals -------
    db2 = _db(backend, tmp_path_factory.mktemp("b"))
    consumer2 = Consumer("payout", db2, inbox, build_handlers(cfg))
    queue = events + [rng.choice(events) for _ in range(len(events))] + _republished(events, rng)
    rng.shuffle(queue)
    clock = t0
    while queue:
        if rng.random() < 0.25:
            clock += timedelta(seconds=rng.randrange(0, HOLD))
            _release(db2, clock)
        _consume(consumer2, queue)
    _release(db2, end)
    _check(db2, end)
    assert _balances(db2) == {k: v for k, v in model.items() if v}  # 4 (and 7: refunded parts are gone)
    db.dispose()
    db2.dispose()
