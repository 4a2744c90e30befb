"""Risk's event handlers and decisions, free of Flask: orders (screened by the checks in
screening.py), self-referral and rings, withdrawal review, the operator's decisions and the
blocklist.

Time windows are measured on the events' own clocks (an order's ``created_at``, a
withdrawal's ``requested_at``), never on when risk happens to handle them, so a backlog
worked off after an outage, or events arriving out of order, give the same answers.
"""
from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, bindparam, func, or_, select
from sqlalchemy.orm import Session

from shared.db import run
from shared.errors import Conflict, Invalid
from shared.identity import email_hash, normalise_email
from shared.inbox import NotReady

from .models import (BlockEntry, Decision, Earning, Fingerprint, Order, Product, User, Withdrawal,
                     outbox)
from .rules import Hit, RuleBook, rule_book
from .screening import assess_order, routable

BLOCK_KINDS = ("email", "email_domain", "ip", "device")


# -- identities ------------------------------------------------------------------------------

def parse_time(value: str | None, default: datetime | None = None) -> datetime:
    if not value:
        if default is None:
            raise ValueError("a timestamp is required")
        return default
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"naive timestamp {value!r}")
    return parsed


def _ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value[:64]


# -- projections -----------------------------------------------------------------------------

def _get_or_add(session: Session, model, key: str, **new):
    """The projection's row of ``key``; a new one with the values ``new`` if there is none."""
    row = session.get(model, key)
    if row is None:
        row = model(**new)
        session.add(row)
    return row


def upsert_product(session: Session, p: dict) -> None:
    product = _get_or_add(session, Product, p["product_id"], id=p["product_id"], orders_seen=0, amount_sum_cents=0,
                          version=-1)
    version = p.get("version", 0)
    if product.version >= version:
        return
    product.merchant_id, product.version = p.get("merchant_id"), version
    product.price_cents, product.max_per_order = p.get("price_cents"), p.get("max_per_order")


def _identities(x: User | Order) -> list[tuple[str, str | None]]:
    """What a registration or an order shows of a user, as fingerprints."""
    return [("email", x.email_hash), ("ip", x.ip), ("device", x.device_id)]


def _fingerprints(session: Session, user_id: str, kinds=None) -> set[tuple[str, str]]:
    query = select(Fingerprint.kind, Fingerprint.value).where(Fingerprint.user_id == user_id)
    return set(session.execute(query if kinds is None else query.where(Fingerprint.kind.in_(kinds))).all())


def _add_fingerprints(session: Session, user_id: str, pairs: list[tuple[str, str | None]],
                      at: datetime) -> list[tuple[str, str]]:
    """Remember identifiers of a user; returns those not known before."""
    pairs = [(kind, value) for kind, value in pairs if value]
    if not pairs:
        return []
    known = _fingerprints(session, user_id, {k for k, _ in pairs})
    added = []
    for kind, value in dict.fromkeys(pairs):
        if (kind, value) not in known:
            session.add(Fingerprint(user_id=user_id, kind=kind, value=value, first_seen=at))
            added.append((kind, value))
    return added


def _set_graph(user: User, parent_id: str | None, ancestors: list, at: datetime) -> None:
    if user.graph_at is None or user.graph_at < at:
        user.parent_id, user.ancestors, user.graph_at = parent_id, list(ancestors or []), at


def on_user_registered(session: Session, p: dict) -> None:
    at = parse_time(p.get("registered_at"))
    user = _get_or_add(session, User, p["user_id"], id=p["user_id"], ancestors=[])
    client = p.get("client") or {}
    user.email_hash, user.ip, user.device_id = p.get("email_hash"), _ip(client.get("ip")), client.get("device_id")
    user.registered_at = at
    _set_graph(user, p.get("parent_id"), p.get("ancestors") or [], at)
    _add_fingerprints(session, user.id, _identities(user), at)


def _registered(session: Session, user_id: str) -> User:
    """A user whose registration was seen; NotReady (retried later) before."""
    user = session.get(User, user_id)
    if user is None or user.registered_at is None:
        raise NotReady(f"user {user_id} not seen yet")
    return user


def on_user_bound(session: Session, p: dict) -> None:
    user = _get_or_add(session, User, p["user_id"], id=p["user_id"], ancestors=[])
    _set_graph(user, p.get("parent_id"), p.get("ancestors") or [], parse_time(p.get("bound_at")))


# -- orders ----------------------------------------------------------------------------------

def _resolve_buyer(session: Session, order: Order) -> str | None:
    """The user who placed an order: logged in, else the one user its email, device or
    payment account points to (none when it points to several)."""
    if order.buyer_user_id:
        return order.buyer_user_id
    for kind, value in (("email", order.email_hash), ("device", order.device_id), ("payer", order.payer_account)):
        if value:
            users = session.scalars(select(Fingerprint.user_id).where(
                Fingerprint.kind == kind, Fingerprint.value == value).distinct().limit(2)).all()
            if len(users) == 1:
                return users[0]
    return None


_products = Product.__table__
_orders = Order.__table__
_at = _orders.c.created_at.type
_BUMP_PRODUCT = _products.update().where(_products.c.id == bindparam("b_id")).values(
    orders_seen=func.coalesce(_products.c.orders_seen, 0) + 1,
    amount_sum_cents=func.coalesce(_products.c.amount_sum_cents, 0) + bindparam("b_amount", type_=BigInteger()))
_NEW_PRODUCT = _products.insert().values(id=bindparam("b_id"), version=-1, orders_seen=1,
                                         amount_sum_cents=bindparam("b_amount", type_=BigInteger()))


def _learn_amount(session: Session, order: Order) -> None:
    """One more order passed for the product: its running amount statistics, kept by these
    statements alone (``run`` flushes a product an earlier event of the batch added first; the
    statistics are read by ``_PRODUCT_STATS`` only, never from a ``Product`` object)."""
    params = {"b_id": order.product_id, "b_amount": order.amount_cents}
    if run(session, _BUMP_PRODUCT, params).rowcount == 0:
        run(session, _NEW_PRODUCT, params)


def _decision(kind: str, subject: str, decision: str, score: int, hits: list[Hit], at: datetime, **ids) -> dict:
    """A decision's column values (``ids``: its order_no, user_id or withdrawal_id)."""
    return {"order_no": None, "user_id": None, "withdrawal_id": None, "note": None, **ids,
            "kind": kind, "subject": subject, "rules_decision": decision, "decision": decision, "score": score,
            "reasons": [h.view() for h in hits], "decided_by": "rules", "created_at": at, "decided_at": at}


def _record(session: Session, kind: str, subject: str, decision: str, score: int, hits: list[Hit],
            at: datetime, **ids) -> Decision:
    row = Decision(**_decision(kind, subject, decision, score, hits, at, **ids))
    session.add(row)
    return row


# An order and its decision, every order: inserted as statements (the ORM's flush of the two
# objects cost a fifth of the worker's CPU); its payment and delivery are statements too. What
# works on the order as an object (a commission line, a refund) reads it afresh (``_order``).
_INSERT_ORDER = _orders.insert().values({c.name: bindparam(c.name) for c in _orders.columns})
_decisions = Decision.__table__
_INSERT_DECISION = _decisions.insert().values({c.name: bindparam(c.name) for c in _decisions.columns if c.name != "id"})
_ORDER_STATE = select(_orders.c.paid_at, _orders.c.delivered_at, _orders.c.created_at, _orders.c.buyer_user_id) \
    .where(_orders.c.order_no == bindparam("order_no"))
_SET_PAID = _orders.update().where(_orders.c.order_no == bindparam("b_order_no")).values(
    paid_at=bindparam("b_paid_at", type_=_at), payer_account=bindparam("b_payer_account"))
_HAS_EARNING = select(Earning.__table__.c.id).where(Earning.__table__.c.order_no == bindparam("order_no")).limit(1)
# An order delivered: ``delivered_at`` (given, else when it was paid, else created) unless known,
# and ``paid_at`` unless known. SET expressions read the row as it was.
_SET_DELIVERED = _orders.update().where(_orders.c.order_no == bindparam("b_order_no")).values(
    delivered_at=func.coalesce(_orders.c.delivered_at, bindparam("b_delivered_at", type_=_at), _orders.c.paid_at,
                               _orders.c.created_at),
    paid_at=func.coalesce(_orders.c.paid_at, bindparam("b_paid_at", type_=_at)))


def reason_texts(reasons: list[dict]) -> list[str]:
    return [f"{r['rule']}: {r['reason']}" for r in reasons]


def on_order_created(session: Session, p: dict) -> dict | None:
    """Assess an order once and answer delivery with ``risk.order.assessed``; returns the
    decision's values (None: assessed before)."""
    if run(session, _ORDER_STATE, {"order_no": p["order_no"]}).first() is not None:
        return None  # the same order announced again: it was assessed and answered already
    client = p.get("client") or {}
    email = p.get("email")
    order = Order(order_no=p["order_no"], product_id=p["product_id"], merchant_id=p.get("merchant_id"),
                  quantity=p["quantity"], amount_cents=p["amount_cents"],
                  email_hash=email_hash(email) if email else None,
                  email_domain=normalise_email(email).rpartition("@")[2] if email else None,
                  ip=_ip(client.get("ip")), device_id=client.get("device_id"),
                  buyer_user_id=p.get("buyer_user_id"), ref_code=p.get("ref_code"),
                  created_at=parse_time(p.get("created_at")), refunded=False)
    book = rule_book(session)
    hits = assess_order(session, book, order, email)
    decision, score = book.decide(hits)
    order.buyer_ref = order.buyer_user_id  # a guest is matched to a user only if a commission needs it
    run(session, _INSERT_ORDER, {c.name: getattr(order, c.key) for c in _orders.columns})
    if order.buyer_user_id:
        _seen_on(session, order.buyer_user_id, _identities(order), order.created_at)
    if decision == "approve":  # the product's usual amount is learned from orders that pass
        _learn_amount(session, order)
    row = _decision("order", order.order_no, decision, score, hits, order.created_at, order_no=order.order_no)
    run(session, _INSERT_DECISION, row)
    _publish_assessed(session, "order", order.order_no, decision, score, row["reasons"])
    return row


_SUBJECT_KEY = {"order": "order_no", "withdrawal": "withdrawal_id"}


def _publish_assessed(session: Session, kind: str, subject: str, decision: str, score: int,
                      reasons: list[dict]) -> None:
    """``risk.order.assessed`` or ``risk.withdrawal.assessed``: the decision on an order or a withdrawal."""
    outbox.add(session, f"risk.{kind}.assessed", {_SUBJECT_KEY[kind]: subject, "decision": decision, "score": score,
                                                  "reasons": reason_texts(reasons)}, subject)


def _order(session: Session, order_no: str) -> Order:
    """The order as an object, read afresh: the statements of ``on_order_paid`` and
    ``on_order_delivered`` may have changed its row since this transaction loaded it."""
    order = session.get(Order, order_no, populate_existing=True)
    if order is None:
        raise NotReady(f"order {order_no} not seen yet")
    return order


def _order_state(session: Session, order_no: str):
    state = run(session, _ORDER_STATE, {"order_no": order_no}).first()
    if state is None:
        raise NotReady(f"order {order_no} not seen yet")
    return state


def on_order_paid(session: Session, p: dict) -> None:
    """The payment, once: its time and payment account. The account is one more identity of
    a logged-in buyer, and lines accrued before the payment are looked at again with it."""
    order_no = p["order_no"]
    state = _order_state(session, order_no)
    if state.paid_at is not None:
        return
    paid_at = parse_time(p.get("paid_at"), state.created_at)
    payer_account = p.get("payer_account") or None
    run(session, _SET_PAID, {"b_order_no": order_no, "b_paid_at": paid_at, "b_payer_account": payer_account})
    if payer_account and state.buyer_user_id:
        _seen_on(session, state.buyer_user_id, [("payer", payer_account)], paid_at)
    if payer_account and run(session, _HAS_EARNING, {"order_no": order_no}).first() is not None:
        screen_commission(session, _order(session, order_no))  # the commission came first: look again


def on_order_delivered(session: Session, p: dict) -> None:
    """When the order was delivered (and paid, if the payment was not seen), unless known."""
    order_no = p["order_no"]
    times, unreadable = {}, {}
    for key in ("delivered_at", "paid_at"):
        try:
            times[key] = parse_time(p[key]) if p.get(key) else None
        except ValueError as exc:
            times[key], unreadable[key] = None, exc
    if unreadable:  # a time the order already has is not read at all: only a missing one must be readable
        state = _order_state(session, order_no)
        for key, exc in unreadable.items():
            if getattr(state, key) is None:
                raise exc
    if run(session, _SET_DELIVERED, {"b_order_no": order_no, "b_delivered_at": times["delivered_at"],
                                     "b_paid_at": times["paid_at"]}).rowcount == 0:
        raise NotReady(f"order {order_no} not seen yet")


def on_order_refunded(session: Session, p: dict) -> None:
    _order(session, p["order_no"]).refunded = True


# -- commission: self-referral and rings -----------------------------------------------------

def on_commission_accrued(session: Session, p: dict, at: datetime) -> None:
    order = _order(session, p["order_no"])
    users = {line["user_id"] for line in p.get("lines", [])}
    if order.buyer_user_id:
        users.add(order.buyer_user_id)
    for user_id in users:
        _registered(session, user_id)
    if order.buyer_ref is None:
        order.buyer_ref = _resolve_buyer(session, order)
    known = set(session.scalars(select(Earning.level).where(Earning.order_no == order.order_no)))
    for line in p.get("lines", []):
        if line["level"] in known:
            continue
        session.add(Earning(order_no=order.order_no, user_id=line["user_id"], level=line["level"],
                            amount_cents=line["amount_cents"], buyer_ref=order.buyer_ref, flagged=False,
                            created_at=order.delivered_at or at))
    session.flush()
    screen_commission(session, order)


def _buyer_fingerprints(session: Session, order: Order) -> set[tuple[str, str]]:
    mine = {(k, v) for k, v in (("device", order.device_id), ("email", order.email_hash),
                                ("payer", order.payer_account), ("ip", order.ip)) if v}
    if order.buyer_user_id:  # who the buyer is beyond this order; not every IP they ever used
        mine |= {(k, v) for k, v in _fingerprints(session, order.buyer_user_id) if k != "ip"}
        user = session.get(User, order.buyer_user_id)
        if user is not None and user.ip:
            mine.add(("ip", user.ip))
    return {(k, v) for k, v in mine if k != "ip" or routable(v)}


def _quiet_ip(session: Session, ip: str, at: datetime, lookback_s: int, max_devices: int) -> bool:
    """A home rather than an office or a carrier NAT: few devices ever seen on it lately."""
    since = at - timedelta(seconds=lookback_s)
    devices = set(session.scalars(select(Order.device_id).where(
        Order.ip == ip, Order.created_at >= since, Order.device_id.is_not(None)).distinct().limit(max_devices + 1)))
    if len(devices) <= max_devices:
        devices |= set(session.scalars(select(User.device_id).where(
            User.ip == ip, User.device_id.is_not(None)).distinct().limit(max_devices + 1)))
    return len(devices) <= max_devices


LABELS = {"device": "a device", "payer": "a payment account", "email": "an email address", "ip": "an IP address"}


def _self_referral_hit(session: Session, book: RuleBook, order: Order, earning: Earning,
                       buyer: set) -> Hit | None:
    rule = book.get("self_referral")
    if rule is None or earning.user_id == order.buyer_user_id:
        return None
    shared = buyer & _fingerprints(session, earning.user_id)
    kinds = sorted({k for k, _ in shared if k != "ip"})
    if rule.params["use_ip"]:
        for _, ip in sorted(x for x in shared if x[0] == "ip"):
            if _quiet_ip(session, ip, order.created_at, rule.params["ip_lookback_s"], rule.params["ip_max_devices"]):
                kinds.append("ip")
                break
    if not kinds:
        return None
    return rule.hit("the buyer shares " + " and ".join(LABELS[k] for k in kinds) +
                    f" with {earning.user_id}, who earns on this order at level {earning.level}")


def _ring_pairs(session: Session, book: RuleBook, earnings: list[Earning]) -> list[tuple[str, str, int, int]]:
    rule = book.get("ring")
    if rule is None:
        return []
    k, max_level = rule.params["min_each_way"], rule.params["max_level"]
    pairs = []
    for e in earnings:
        if e.level > max_level or not e.buyer_ref or e.buyer_ref == e.user_id:
            continue

        def count(earner, buyer):
            return session.scalar(select(func.count()).select_from(Earning).where(
                Earning.user_id == earner, Earning.buyer_ref == buyer, Earning.level <= max_level))
        there = count(e.user_id, e.buyer_ref)
        back = count(e.buyer_ref, e.user_id) if there >= k else 0
        if there >= k and back >= k:
            pairs.append((e.user_id, e.buyer_ref, there, back))
    return pairs


def _flag(session: Session, earning: Earning, hits: list[Hit], at: datetime) -> None:
    subject = f"{earning.order_no}:{earning.user_id}"
    if session.scalar(select(Decision.id).where(Decision.kind == "commission", Decision.subject == subject)):
        return
    earning.flagged = True
    row = _record(session, "commission", subject, "review", sum(h.score for h in hits), hits, at,
                  order_no=earning.order_no, user_id=earning.user_id)
    outbox.add(session, "risk.commission.flagged", {
        "order_no": earning.order_no, "user_id": earning.user_id,
        "reason": "; ".join(r["reason"] for r in row.reasons)[:300]}, earning.order_no)


def _seen_on(session: Session, user_id: str, pairs: list[tuple[str, str | None]], at: datetime) -> None:
    """A logged-in buyer's order showed these identifiers. Those new on the user that say who
    someone is (a device, payment account or email) get the lines the user earned on orders
    placed with them looked at again (an alt account bought before its maker ever used that
    card or phone for themselves)."""
    added = _add_fingerprints(session, user_id, pairs, at)
    columns = {"device": Order.device_id, "payer": Order.payer_account, "email": Order.email_hash}
    strong = [(kind, value) for kind, value in added if kind in columns]
    if not strong:
        return
    rule = rule_book(session).get("self_referral")
    if rule is None:
        return
    since = at - timedelta(seconds=rule.params["ip_lookback_s"])
    rows = session.execute(select(Earning, Order).join(Order, Order.order_no == Earning.order_no).where(
        Earning.user_id == user_id, Earning.flagged.is_(False), Order.created_at >= since,
        or_(Order.buyer_user_id.is_(None), Order.buyer_user_id != user_id),
        or_(*[columns[kind] == value for kind, value in strong])).order_by(Earning.id)
        .execution_options(populate_existing=True)).all()  # an order's row may have changed by statement
    for earning, order in rows:
        kinds = sorted({kind for kind, value in strong if getattr(order, columns[kind].key) == value})
        _flag(session, earning, [rule.hit("the buyer used " + " and ".join(LABELS[k] for k in kinds) +
                                          f" that {user_id}, who earns on this order at level {earning.level}, "
                                          f"was later seen using")], at)


def screen_commission(session: Session, order: Order) -> None:
    """Flag (hold, never void) every line of the order whose earner looks like the buyer,
    and both sides' lines of a ring. A line is judged once: what the operator cleared stays cleared."""
    book = rule_book(session)
    earnings = list(session.scalars(select(Earning).where(Earning.order_no == order.order_no).order_by(Earning.level)))
    decided = set(session.scalars(select(Decision.user_id).where(Decision.kind == "commission",
                                                                 Decision.order_no == order.order_no)))
    buyer = _buyer_fingerprints(session, order)
    at = order.delivered_at or order.created_at
    for earning in earnings:
        if earning.user_id in decided:
            continue
        hit = _self_referral_hit(session, book, order, earning, buyer)
        if hit is not None:
            _flag(session, earning, [hit], at)
    for earner, other, there, back in _ring_pairs(session, book, earnings):
        rule = book.get("ring")
        hit = rule.hit(f"{earner} and {other} buy through each other ({there} and {back} orders)")
        for line in session.scalars(select(Earning).where(
                or_((Earning.user_id == earner) & (Earning.buyer_ref == other),
                    (Earning.user_id == other) & (Earning.buyer_ref == earner)),
                Earning.level <= rule.params["max_level"], Earning.flagged.is_(False))
                .order_by(Earning.id)).all():
            _flag(session, line, [hit], at)


# -- withdrawals -----------------------------------------------------------------------------

def on_withdrawal_requested(session: Session, p: dict) -> Decision | None:
    if session.get(Withdrawal, p["withdrawal_id"]) is not None:
        return None
    at = parse_time(p.get("requested_at"))
    user = _registered(session, p["user_id"]) if p.get("user_id") else None
    owner = p.get("owner") or f"user:{p.get('user_id')}"
    w = Withdrawal(id=p["withdrawal_id"], owner=owner, user_id=p.get("user_id"), amount_cents=p["amount_cents"],
                   fee_cents=p.get("fee_cents") or 0, destination_hash=p.get("destination_hash"), requested_at=at)
    book = rule_book(session)
    hits = assess_withdrawal(session, book, w, user)
    session.add(w)
    decision, score = book.decide(hits)
    row = _record(session, "withdrawal", w.id, decision, score, hits, at, withdrawal_id=w.id, user_id=w.user_id)
    _publish_assessed(session, "withdrawal", w.id, decision, score, row.reasons)
    return row


def assess_withdrawal(session: Session, book: RuleBook, w: Withdrawal, user: User | None) -> list[Hit]:
    hits = []
    gross = w.amount_cents + (w.fee_cents or 0)
    rule = book.get("withdrawal_new_account")
    if rule is not None and user is not None:
        age = (w.requested_at - user.registered_at).total_seconds()
        if age < rule.params["min_age_s"]:
            hits.append(rule.hit(f"the account is {age / 86400:.1f} days old"))
    if user is not None:
        earned = Earning.amount_cents
        rule = book.get("withdrawal_fast")
        if rule is not None and gross > 0:
            recent = session.scalar(select(func.coalesce(func.sum(earned), 0)).where(
                Earning.user_id == user.id, Earning.created_at >= w.requested_at - timedelta(seconds=rule.params["window_s"]),
                Earning.created_at <= w.requested_at))
            if recent >= rule.params["share"] * gross:
                hits.append(rule.hit(f"{recent / 100:.2f} of the {gross / 100:.2f} was earned in the "
                                     f"{rule.params['window_s']}s before"))
        rule = book.get("withdrawal_tainted")
        if rule is not None:
            total, tainted = session.execute(
                select(func.coalesce(func.sum(earned), 0),
                       func.coalesce(func.sum(earned).filter(or_(Earning.flagged.is_(True), Order.refunded.is_(True))), 0))
                .select_from(Earning).join(Order, Order.order_no == Earning.order_no, isouter=True)
                .where(Earning.user_id == user.id)).one()
            if total > 0 and tainted >= rule.params["share"] * total:
                hits.append(rule.hit(f"{tainted / 100:.2f} of {total / 100:.2f} earned comes from flagged "
                                     f"commission or refunded orders"))
    rule = book.get("withdrawal_shared_destination")
    if rule is not None and w.destination_hash:
        others = session.scalar(select(func.count(func.distinct(Withdrawal.owner))).where(
            Withdrawal.destination_hash == w.destination_hash, Withdrawal.owner != w.owner))
        if others >= max(1, rule.params["min_other_owners"]):
            hits.append(rule.hit(f"the destination was used by {others} other account(s)"))
    return hits


# -- the operator ----------------------------------------------------------------------------

def operator_decide(session: Session, row: Decision, verdict: str, note: str | None, now: datetime) -> Decision:
    """The operator's answer to a decision in review; announced like any other decision."""
    if row.decision != "review":
        raise Conflict(f"this decision is {row.decision}, not in review", code="not_in_review")
    row.decision, row.decided_by, row.note, row.decided_at = verdict, "operator", note, now
    reasons = row.reasons + [{"rule": "operator", "score": 0, "reason": f"{verdict}d by the operator"
                              + (f": {note}" if note else "")}]
    if row.kind in ("order", "withdrawal"):
        _publish_assessed(session, row.kind, row.subject, verdict, row.score, reasons)
    else:
        if verdict == "approve":
            earning = session.scalar(select(Earning).where(Earning.order_no == row.order_no,
                                                           Earning.user_id == row.user_id))
            if earning is not None:
                earning.flagged = False
            outbox.add(session, "risk.commission.cleared", {"order_no": row.order_no, "user_id": row.user_id},
                       row.order_no)
        else:
            outbox.add(session, "risk.commission.rejected", {
                "order_no": row.order_no, "user_id": row.user_id,
                "reason": (note or "rejected after risk review")[:300]}, row.order_no)
    return row


# -- the blocklist ---------------------------------------------------------------------------

def normalise_block_value(kind: str, value: str) -> str:
    """The stored form of an entry; ValueError when it is not one."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if kind == "email":
        if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
            raise ValueError("not an email address")
        return normalise_email(value)
    if kind == "email_domain":
        domain = value.lower().lstrip("@").rstrip(".")
        if "@" in domain or "." not in domain or any(not part for part in domain.split(".")):
            raise ValueError("not a domain")
        return "gmail.com" if domain == "googlemail.com" else domain
    if kind == "ip":
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError("not an IP address or CIDR network") from None
    if kind == "device":
        if len(value) > 128:
            raise ValueError("longer than 128 characters")
        return value
    raise ValueError(f"kind must be one of {', '.join(BLOCK_KINDS)}")


def add_block(session: Session, kind: str, value: str, reason: str | None, now: datetime) -> BlockEntry:
    try:
        stored = normalise_block_value(kind, value)
    except ValueError as exc:
        raise Invalid("the request has invalid fields", {"value": [str(exc)]}) from None
    if session.scalar(select(BlockEntry.id).where(BlockEntry.kind == kind, BlockEntry.value == stored)):
        raise Conflict(f"{kind} {stored} is already on the blocklist", code="already_blocked")
    entry = BlockEntry(kind=kind, value=stored, reason=reason, created_at=now)
    session.add(entry)
    session.flush()
    return entry
