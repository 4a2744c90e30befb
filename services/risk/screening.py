"""Order screening: each check that can hold or refuse an order, and ``assess_order``, which
runs them all. The checks read this service's projections of orders, products, users and
the blocklist; they write nothing (domain.py records the decision and publishes it).

Time windows are measured on the order's own ``created_at``, never on when risk happens to
handle the event, so a backlog worked off after an outage gives the same answers.
"""
from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import bindparam, case, func, or_, select
from sqlalchemy.orm import Session

from shared.db import run
from shared.identity import normalise_email

from .models import BlockEntry, Order, Product
from .rules import Hit, RuleBook

SOURCE_LABELS = {"device_id": "device", "email_hash": "email", "ip": "IP"}  # an order's sources, as reasons name them
SOURCE_DIMENSIONS = tuple(SOURCE_LABELS.items())
ROW_CAP = 500  # rows read per source and window: enough for every limit, bounded on a busy NAT


def routable(ip: str | None) -> bool:
    """Only a public address says anything about who is behind it: a private or loopback
    one is a proxy's (or a test's) and is shared by everyone, so no rule counts it."""
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


_products = Product.__table__
_PRODUCT_STATS = select(_products.c.price_cents, _products.c.max_per_order, _products.c.orders_seen,
                        _products.c.amount_sum_cents).where(_products.c.id == bindparam("product_id"))
_orders = Order.__table__
_at = _orders.c.created_at.type


@lru_cache(maxsize=None)  # built once per column: a statement object reused is compiled once
def _source_rows_statement(column: str):
    o = _orders
    return (select(o.c.created_at, o.c.paid_at, o.c.payer_account, o.c.quantity, o.c.product_id, o.c.email_hash)
            .where(o.c[column] == bindparam("value"), o.c.created_at >= bindparam("since", type_=_at),
                   o.c.created_at <= bindparam("t", type_=_at), o.c.order_no != bindparam("order_no"))
            .order_by(o.c.created_at.desc()).limit(ROW_CAP))


def _source_rows(session: Session, order: Order, window_s: int) -> dict[str, list]:
    """The orders from each of this order's sources within ``window_s`` before it, newest first."""
    since = order.created_at - timedelta(seconds=window_s)
    rows = {}
    for column, _label in SOURCE_DIMENSIONS:
        value = getattr(order, column)
        if not value or (column == "ip" and not routable(value)):
            continue
        rows[column] = run(session, _source_rows_statement(column), {
            "value": value, "since": since, "t": order.created_at, "order_no": order.order_no}).all()
    return rows


def _unpaid_at(row, at: datetime) -> bool:
    return row.paid_at is None or row.paid_at > at


@lru_cache(maxsize=4096)  # at most ~10 MB (IPv4); an IP seen again costs nothing
def _ip_networks(ip: str) -> tuple[str, ...]:
    """Every network holding ``ip``, as the blocklist stores them (``normalise_block_value``),
    from the address itself down to /0; () when ``ip`` is no address."""
    try:
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv4Address):
            n = int(address)
            return tuple(f"{m >> 24}.{(m >> 16) & 255}.{(m >> 8) & 255}.{m & 255}/{bits}"
                         for bits in range(32, -1, -1) for m in (n & ((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF),))
        if address.scope_id is None:
            n, full = int(address), (1 << 128) - 1
            return tuple(f"{ipaddress.IPv6Address(n & ((full << (128 - bits)) & full))}/{bits}"
                         for bits in range(128, -1, -1))
        return tuple(str(ipaddress.ip_network(f"{address}/{bits}", strict=False))
                     for bits in range(address.max_prefixlen, -1, -1))
    except ValueError:
        return ()


@lru_cache(maxsize=None)  # one per kinds and how many values: built once, so compiled once by ``run``
def _blocklist_statement(shape: tuple[tuple[str, int], ...]):
    """Entries of any of the kinds in ``shape`` with one of the values bound as ``<kind>_<i>``
    (a plain IN list: an expanding one would be rewritten on every execution)."""
    b = BlockEntry.__table__
    return (select(b.c.kind, b.c.value, b.c.reason)
            .where(or_(*[(b.c.kind == kind) & b.c.value.in_([bindparam(f"{kind}_{i}") for i in range(n)])
                         for kind, n in shape]))
            .order_by(b.c.id))


BLOCK_LABELS = {"email": "email", "email_domain": "email domain", "ip": "IP", "device": "device"}


def _blocklist_hits(session: Session, book: RuleBook, order: Order, email: str | None) -> list[Hit]:
    rule = book.get("blocklist")
    if rule is None:
        return []
    wanted: dict[str, list[str]] = {}
    if email:
        normalised = normalise_email(email)
        domain = normalised.rpartition("@")[2]
        parts = domain.split(".")
        wanted["email"] = [normalised]
        domains = [".".join(parts[i:]) for i in range(len(parts) - 1)]
        if domains:
            wanted["email_domain"] = domains
    if order.device_id:
        wanted["device"] = [order.device_id]
    if order.ip:
        networks = _ip_networks(order.ip)
        if networks:
            wanted["ip"] = list(networks)
    if not wanted:
        return []
    shape = tuple((kind, len(values)) for kind, values in sorted(wanted.items()))
    params = {f"{kind}_{i}": value for kind, values in wanted.items() for i, value in enumerate(values)}
    entries = run(session, _blocklist_statement(shape), params).all()
    return [rule.hit(f"{BLOCK_LABELS[e.kind]} is blocklisted ({e.value})" + (f": {e.reason}" if e.reason else ""))
            for e in entries]


def _velocity_hits(book: RuleBook, order: Order, rows: dict) -> list[Hit]:
    hits = []
    for column, name in (("ip", "velocity_ip"), ("device_id", "velocity_device"), ("email_hash", "velocity_email")):
        rule, label = book.get(name), SOURCE_LABELS[column]
        if rule is None or column not in rows:
            continue
        since = order.created_at - timedelta(seconds=rule.params["window_s"])
        count = 1 + sum(1 for r in rows[column] if r.created_at >= since)
        if count > rule.params["limit"]:
            hits.append(rule.hit(f"{count} orders from this {label} within {rule.params['window_s']}s "
                                 f"(limit {rule.params['limit']})"))
    return hits


def _card_testing_hits(book: RuleBook, order: Order, rows: dict) -> list[Hit]:
    rule = book.get("card_testing")
    if rule is None:
        return []
    p, t = rule.params, order.created_at
    reasons = []
    for column, label in SOURCE_DIMENSIONS:
        if column not in rows:
            continue
        # A NAT multiplies how many orders, reservations and cards an IP shows, not the share of
        # them left unpaid: the volume limits scale with ip_factor, the share does not.
        factor = p["ip_factor"] if column == "ip" else 1
        since, open_since = t - timedelta(seconds=p["window_s"]), t - timedelta(seconds=p["open_window_s"])
        recent = [r for r in rows[column] if r.created_at >= since]
        unpaid = sum(1 for r in recent if _unpaid_at(r, t))
        held = [r for r in recent if r.created_at >= open_since and _unpaid_at(r, t)]
        still_open, open_keys = len(held), sum(r.quantity for r in held)
        payers = {r.payer_account for r in recent if r.payer_account and not _unpaid_at(r, t)}
        if len(recent) >= p["min_orders"] and unpaid >= p["unpaid_share"] * len(recent):
            reasons.append(f"{unpaid} of the {len(recent)} orders from this {label} within {p['window_s']}s "
                           f"were never paid")
        elif still_open >= p["max_open"] * factor or (still_open >= 2 and open_keys >= p["max_open_keys"] * factor):
            reasons.append(f"this {label} holds {still_open} unpaid reservations ({open_keys} keys)")
        if len(payers) >= p["max_payers"] * factor:
            reasons.append(f"this {label} paid with {len(payers)} different payment accounts "
                           f"within {p['window_s']}s")
    return [rule.hit("card testing: " + "; ".join(reasons))] if reasons else []


def _product_burst_statement():
    """How many of the product's newest ``ROW_CAP`` orders within the window there are, and
    how many of them were unpaid at ``t`` (``_unpaid_at``): counted in the database."""
    o = _orders
    t = bindparam("t", type_=_at)
    newest = (select(o.c.paid_at).where(o.c.product_id == bindparam("product_id"),
                                        o.c.created_at >= bindparam("since", type_=_at), o.c.created_at <= t,
                                        o.c.order_no != bindparam("order_no"))
              .order_by(o.c.created_at.desc()).limit(ROW_CAP).subquery())
    unpaid = or_(newest.c.paid_at.is_(None), newest.c.paid_at > t)
    return select(func.count(), func.sum(case((unpaid, 1), else_=0))).select_from(newest)


_PRODUCT_BURST = _product_burst_statement()


def _product_burst_hits(session: Session, book: RuleBook, order: Order, rows: dict) -> list[Hit]:
    rule = book.get("product_burst")
    if rule is None:
        return []
    p, t = rule.params, order.created_at
    recent, unpaid = run(session, _PRODUCT_BURST, {
        "product_id": order.product_id, "since": t - timedelta(seconds=p["window_s"]), "t": t,
        "order_no": order.order_no}).one()
    unpaid = unpaid or 0
    if unpaid < max(1, p["min_unpaid"]) or unpaid < p["unpaid_share"] * recent or not _is_fresh(session, order, rows):
        return []
    hits = [rule.hit(f"a new source during a burst: {unpaid} of the {recent} orders of this product "
                     f"within {p['window_s']}s are unpaid")]
    shared = book.get("burst_shared_ip")
    if shared is not None and "ip" in rows:
        since = t - timedelta(seconds=p["window_s"])
        held = sum(1 for r in rows["ip"] if r.product_id == order.product_id and r.created_at >= since
                   and _unpaid_at(r, t))
        if held:
            hits.append(shared.hit(f"this IP already holds {held} unpaid order(s) of this product during the burst, "
                                   f"under another device and email"))
    return hits


_disposable_last: tuple[object, frozenset] | None = None


def _disposable_domains(rule) -> frozenset:
    """The rule's domains, normalised; worked out again whenever the rule object is another
    (a ``RuleBook`` is never changed once built, see ``rules.rule_book``)."""
    global _disposable_last
    last = _disposable_last
    if last is not None and last[0] is rule:
        return last[1]
    domains = frozenset(d.strip().lower().rstrip(".") for d in rule.params["domains"])
    _disposable_last = (rule, domains)
    return domains


def _disposable_hits(book: RuleBook, order: Order) -> list[Hit]:
    rule = book.get("disposable_email")
    if rule is None or not order.email_domain:
        return []
    domains = _disposable_domains(rule)
    parts = order.email_domain.split(".")
    suffixes = {".".join(parts[i:]) for i in range(len(parts) - 1)}
    if suffixes & domains:
        return [rule.hit(f"the email is at a throwaway mailbox service ({order.email_domain})")]
    return []


def _recent_unpaid_hits(book: RuleBook, order: Order, rows: dict) -> list[Hit]:
    rule = book.get("recent_unpaid")
    if rule is None:
        return []
    since = order.created_at - timedelta(seconds=rule.params["window_s"])
    for column in ("device_id", "ip"):
        label = SOURCE_LABELS[column]
        # an honest buyer trying again keeps their email; a card tester takes a new one per card
        unpaid = sum(1 for r in rows.get(column, ()) if r.created_at >= since and _unpaid_at(r, order.created_at)
                     and r.email_hash != order.email_hash)
        if unpaid:
            return [rule.hit(f"{unpaid} earlier order(s) from this {label} under another email within "
                             f"{rule.params['window_s']}s still unpaid")]
    return []


_PAYER_PAID = select(func.count()).select_from(_orders).where(
    _orders.c.payer_account == bindparam("payer"), _orders.c.paid_at >= bindparam("since", type_=_at),
    _orders.c.paid_at <= bindparam("t", type_=_at))


def _payer_velocity_hits(session: Session, book: RuleBook, order: Order, rows: dict) -> list[Hit]:
    rule = book.get("velocity_payer")
    if rule is None:
        return []
    since = order.created_at - timedelta(seconds=rule.params["window_s"])
    payers = {r.payer_account for column in ("device_id", "email_hash") for r in rows.get(column, ())
              if r.payer_account and r.created_at >= since}
    for payer in sorted(payers)[:5]:
        count = run(session, _PAYER_PAID, {"payer": payer, "since": since, "t": order.created_at}).scalar()
        if count >= rule.params["limit"]:
            return [rule.hit(f"the payment account this buyer uses paid {count} orders within "
                             f"{rule.params['window_s']}s (limit {rule.params['limit']})")]
    return []


FRESH_COLUMNS = ("device_id", "email_hash", "buyer_user_id")


@lru_cache(maxsize=None)  # one per set of columns an order has
def _earlier_order_statement(columns: tuple[str, ...]):
    return select(_orders.c.order_no).where(
        or_(*[_orders.c[c] == bindparam(c) for c in columns]), _orders.c.created_at <= bindparam("t", type_=_at),
        _orders.c.order_no != bindparam("order_no")).limit(1)


def _is_fresh(session: Session, order: Order, rows: dict) -> bool:
    """No earlier order from this device, email or logged-in user (an IP says too little)."""
    if rows.get("device_id") or rows.get("email_hash"):
        return False
    columns = tuple(c for c in FRESH_COLUMNS if getattr(order, c))
    if not columns:
        return True
    params = {c: getattr(order, c) for c in columns}
    return run(session, _earlier_order_statement(columns),
               {**params, "t": order.created_at, "order_no": order.order_no}).first() is None


def _fresh_source_hits(session: Session, book: RuleBook, order: Order, product, rows: dict) -> list[Hit]:
    """``product``: its price, per-order maximum and running amount statistics (a row), or None."""
    amount_rule, quantity_rule = book.get("first_order_amount"), book.get("max_quantity_fresh")
    if amount_rule is None and quantity_rule is None:
        return []
    hits = []
    fresh = None
    if amount_rule is not None:
        p = amount_rule.params
        if product is not None and product.orders_seen >= p["min_history"]:
            usual = product.amount_sum_cents / product.orders_seen
        elif product is not None and product.price_cents:
            usual = product.price_cents
        else:
            usual = order.amount_cents / max(1, order.quantity)
        if order.amount_cents >= p["min_amount_cents"] and order.amount_cents >= p["factor"] * usual:
            fresh = _is_fresh(session, order, rows)
            if fresh:
                hits.append(amount_rule.hit(f"a first order of {order.amount_cents / 100:.2f}, "
                                            f"{order.amount_cents / usual:.1f}x the product's usual amount"))
    if quantity_rule is not None and product is not None and product.max_per_order:
        if product.max_per_order >= quantity_rule.params["min_max"] and order.quantity >= product.max_per_order:
            fresh = _is_fresh(session, order, rows) if fresh is None else fresh
            if fresh:
                hits.append(quantity_rule.hit(f"a first order at the per-order maximum ({order.quantity})"))
    return hits


def assess_order(session: Session, book: RuleBook, order: Order, email: str | None) -> list[Hit]:
    windows = [book.rules[name].params["window_s"]
               for name in ("velocity_ip", "velocity_device", "velocity_email", "velocity_payer", "card_testing",
                            "product_burst", "recent_unpaid")]
    windows.append(book.rules["card_testing"].params["open_window_s"])
    rows = _source_rows(session, order, max(windows))
    product = run(session, _PRODUCT_STATS, {"product_id": order.product_id}).first()
    return (_blocklist_hits(session, book, order, email) + _velocity_hits(book, order, rows)
            + _payer_velocity_hits(session, book, order, rows) + _card_testing_hits(book, order, rows)
            + _product_burst_hits(session, book, order, rows) + _disposable_hits(book, order)
            + _recent_unpaid_hits(book, order, rows)
            + _fresh_source_hits(session, book, order, product, rows))
