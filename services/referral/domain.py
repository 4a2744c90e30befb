"""Referral rules, free of Flask: attribution, commission lines and their story (the
referral graph itself is binding.py).

Every commission line is frozen when it accrues (rate, level, amount); refunds reverse it
pro rata at those frozen figures, and the attribution row keeps the chain that was used,
so "why did (or didn't) I get paid?" has the same answer forever.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import metrics
from shared.errors import Conflict
from shared.db import after_commit
from shared.inbox import NotReady
from shared.projection import upsert_newer

from .binding import ancestors, user_by_code
from .models import Attribution, CommissionLine, Merchant, Product, User, outbox

MAX_LEVELS = 3


# -- projections -----------------------------------------------------------------------------

def upsert_product(session: Session, p: dict) -> None:
    rule = p.get("commission") or {}
    upsert_newer(session, Product, p["product_id"], p["version"], merchant_id=p["merchant_id"], title=p["title"],
                 levels_bps=list(rule.get("levels_bps") or [])[:MAX_LEVELS], cap_bps=rule.get("cap_bps"))


def upsert_merchant(session: Session, p: dict) -> None:
    binding = p.get("binding") or {}  # absent from events written before merchants chose a rule
    upsert_newer(session, Merchant, p["merchant_id"], p["version"], fee_bps=p.get("fee_bps", 200),
                 binding_mode=binding.get("mode") or "permanent", binding_lock_days=binding.get("lock_days"))


# -- commission ------------------------------------------------------------------------------

def platform_fee(amount_cents: int, fee_bps: int) -> int:
    return amount_cents * fee_bps // 10000


def resolve_chain(session: Session, buyer_user_id: str | None, ref_code: str | None) -> tuple[str, list[str]]:
    """Design §6: a bound buyer's own upline; else the ref code's owner and their upline."""
    buyer = session.get(User, buyer_user_id) if buyer_user_id else None
    if buyer is not None and buyer.parent_id:
        return "buyer_upline", ancestors(buyer)
    if ref_code:
        owner = user_by_code(session, ref_code)
        if owner is not None:
            return "ref_code", [owner.id] + ancestors(owner)
    return "none", []


def _terms(session: Session, p: dict) -> tuple[int, list[int], int | None]:
    """The fee and rule the order was sold under: carried on the event (frozen when the buyer
    ordered), so a rule changed since, or an event replayed later, computes the same lines."""
    if "fee_bps" in p and "commission" in p:
        rule = p["commission"] or {}
        return p["fee_bps"], list(rule.get("levels_bps") or [])[:MAX_LEVELS], rule.get("cap_bps")
    product, merchant = session.get(Product, p["product_id"]), session.get(Merchant, p["merchant_id"])
    if product is None or merchant is None:
        raise NotReady(f"product {p['product_id']} or merchant {p['merchant_id']} not seen yet")
    return merchant.fee_bps, list(product.levels_bps), product.cap_bps


def accrue(session: Session, p: dict, now: datetime) -> list[dict]:
    fee_bps, levels_bps, cap_bps = _terms(session, p)
    source, chain = resolve_chain(session, p.get("buyer_user_id"), p.get("ref_code"))
    amount, cost = p["amount_cents"], p.get("cost_cents", 0)
    fee = platform_fee(amount, fee_bps)
    margin = max(0, amount - fee - cost)
    limit = margin if cap_bps is None else margin * cap_bps // 10000
    attribution = Attribution(
        order_no=p["order_no"], product_id=p["product_id"], merchant_id=p["merchant_id"],
        buyer_user_id=p.get("buyer_user_id"), ref_code=p.get("ref_code"), source=source, chain=chain,
        levels_bps=levels_bps, cap_bps=cap_bps, quantity=p["quantity"],
        amount_cents=amount, fee_cents=fee, cost_cents=cost, limit_cents=limit, refunded_quantity=0,
        delivered_at=now)
    session.add(attribution)
    session.flush()  # a second delivered event for the same order stops here (primary key)
    lines, room = [], limit
    for level, rate in enumerate(attribution.levels_bps, start=1):
        if level > len(chain):
            break
        user_id = chain[level - 1]
        if user_id == attribution.buyer_user_id or rate <= 0:
            continue  # the buyer is never paid in their own upline
        uncapped = amount * rate // 10000
        paid = min(uncapped, room)
        room -= paid
        if paid <= 0:
            continue
        session.add(CommissionLine(order_no=attribution.order_no, user_id=user_id, level=level, rate_bps=rate,
                                   uncapped_cents=uncapped, amount_cents=paid, reversed_cents=0,
                                   status="accrued", created_at=now))
        lines.append({"user_id": user_id, "level": level, "rate_bps": rate, "amount_cents": paid})
    if lines:
        outbox.add(session, "referral.commission.accrued", {
            "order_no": attribution.order_no, "merchant_id": attribution.merchant_id,
            "product_id": attribution.product_id,
            "buyer_user_id": attribution.buyer_user_id, "amount_cents": amount, "lines": lines}, attribution.order_no)

        def count():
            for line in lines:
                metrics.commission_cents.labels(str(line["level"])).inc(line["amount_cents"])
        after_commit(session, count)
    return lines


def _lines(session: Session, order_no: str, user_id: str | None = None) -> list[CommissionLine]:
    query = select(CommissionLine).where(CommissionLine.order_no == order_no).order_by(CommissionLine.level)
    if user_id:
        query = query.where(CommissionLine.user_id == user_id)
    return list(session.scalars(query.with_for_update()))


def _publish_reversal(session: Session, order_no: str, reversed_lines: list[dict], reason: str) -> None:
    if reversed_lines:
        outbox.add(session, "referral.commission.reversed",
                   {"order_no": order_no, "lines": reversed_lines, "reason": reason}, order_no)


def reverse_for_refund(session: Session, p: dict) -> None:
    if not p.get("delivered", True):
        return  # never delivered, so nothing ever accrued
    attribution = session.get(Attribution, p["order_no"], with_for_update=True)
    if attribution is None:
        raise NotReady(f"order {p['order_no']} has not been attributed yet")
    # Refund events carry running totals, so a late or repeated one cannot reverse twice.
    total = min(attribution.quantity, max(attribution.refunded_quantity, p.get("total_refunded_quantity", 0)))
    attribution.refunded_quantity = total
    reversed_lines = []
    for line in _lines(session, p["order_no"]):
        target = line.amount_cents * total // attribution.quantity
        if line.status == "reversed" or target <= line.reversed_cents:
            continue
        reversed_lines.append({"user_id": line.user_id, "level": line.level, "rate_bps": line.rate_bps,
                               "amount_cents": target - line.reversed_cents})
        line.reversed_cents = target
        if target == line.amount_cents:
            line.status, line.flag_reason = "reversed", "refunded"
    _publish_reversal(session, p["order_no"], reversed_lines, "refund")


def _risk_lines(session: Session, p: dict, at: datetime) -> list[CommissionLine]:
    """The lines a risk event speaks of that have not heard anything newer from risk."""
    if session.get(Attribution, p["order_no"]) is None:
        raise NotReady(f"order {p['order_no']} has not been attributed yet")
    fresh = []
    for line in _lines(session, p["order_no"], p["user_id"]):
        if line.risk_event_at is None or line.risk_event_at < at:
            line.risk_event_at = at
            fresh.append(line)
    return fresh


def hold(session: Session, p: dict, at: datetime) -> None:
    for line in _risk_lines(session, p, at):
        if line.status in ("accrued", "released"):
            line.status, line.flag_reason = "held", p.get("reason") or "flagged by risk"


def clear(session: Session, p: dict, at: datetime) -> None:
    lines = _risk_lines(session, p, at)
    settled = session.get(Attribution, p["order_no"]).settled
    for line in lines:
        if line.status == "held":
            line.status, line.flag_reason = ("released" if settled else "accrued"), None


def reject(session: Session, line: CommissionLine, reason: str) -> None:
    if line.status != "held":
        raise Conflict(f"the line is {line.status}, not held", code="not_held")
    amount = line.amount_cents - line.reversed_cents
    line.status, line.reversed_cents, line.flag_reason = "reversed", line.amount_cents, reason
    _publish_reversal(session, line.order_no, [{"user_id": line.user_id, "level": line.level,
                                                "rate_bps": line.rate_bps, "amount_cents": amount}], "rejected")


def release(session: Session, p: dict) -> None:
    attribution = session.get(Attribution, p["order_no"], with_for_update=True)
    if attribution is None:
        raise NotReady(f"order {p['order_no']} has not been attributed yet")
    attribution.settled = True
    for line in _lines(session, p["order_no"]):
        if line.status == "accrued":
            line.status = "released"


# -- the explanation -------------------------------------------------------------------------

REASONS = {
    "paid": "You earned {amount} at level {level} ({rate} bps of the amount paid).",
    "capped_by_margin": "Level {level} pays {rate} bps, but the order's margin only left {amount} for you.",
    "not_in_chain": "You are not in this order's referral chain.",
    "beyond_level_cap": "You are at level {level}; this product pays commission to {levels} level(s) only.",
    "rule_is_zero": "This product pays nothing at level {level}.",
    "buyer_is_self": "You bought this order yourself; nobody is paid in their own upline.",
    "flagged": "Your commission of {amount} is held for review: {why}.",
    "rejected": "Your commission was rejected after review: {why}.",
    "refunded": "The order was refunded, so your commission of {amount} was reversed.",
    "partially_refunded": "Part of the order was refunded: {reversed} of your {amount} was reversed.",
    "order_not_delivered_yet": "This order has not been delivered yet; commission is computed on delivery.",
}


def explain(session: Session, order_no: str, user_id: str) -> dict:
    attribution = session.get(Attribution, order_no)
    result = {"order_no": order_no, "user_id": user_id, "level": None, "rate_bps": None, "amount_cents": 0,
              "status": None}
    if attribution is None:
        return _reason(result, "order_not_delivered_yet")
    result["source"] = attribution.source
    if user_id not in attribution.chain:
        return _reason(result, "not_in_chain")
    level = attribution.chain.index(user_id) + 1
    result["level"] = level
    if user_id == attribution.buyer_user_id:
        return _reason(result, "buyer_is_self")
    if level > len(attribution.levels_bps):
        return _reason(result, "beyond_level_cap", levels=len(attribution.levels_bps))
    rate = attribution.levels_bps[level - 1]
    result["rate_bps"] = rate
    if rate <= 0:
        return _reason(result, "rule_is_zero")
    line = session.scalar(select(CommissionLine).where(CommissionLine.order_no == order_no,
                                                       CommissionLine.level == level))
    if line is None:  # the margin was used up by the levels above
        return _reason(result, "capped_by_margin")
    result.update(amount_cents=line.amount_cents, status=line.status, reversed_cents=line.reversed_cents)
    if line.status == "held":
        return _reason(result, "flagged", why=line.flag_reason)
    if line.status == "reversed":
        return _reason(result, "rejected" if line.flag_reason not in (None, "refunded") else "refunded",
                       why=line.flag_reason)
    if line.reversed_cents:
        return _reason(result, "partially_refunded")
    if line.amount_cents < line.uncapped_cents:
        return _reason(result, "capped_by_margin")
    return _reason(result, "paid")


def _reason(result: dict, code: str, **extra) -> dict:
    def cents(value):
        return f"{(value or 0) / 100:.2f}"
    result["reason_code"] = code
    result["message"] = REASONS[code].format(amount=cents(result.get("amount_cents")), level=result.get("level"),
                                             rate=result.get("rate_bps"), reversed=cents(result.get("reversed_cents")),
                                             why=extra.get("why"), levels=extra.get("levels"))
    return result


# -- team views ------------------------------------------------------------------------------

def team_summary(session: Session, user: User, now: datetime, days: int = 30) -> dict:
    prefix = f"{user.path}{user.id}/"
    members = User.path.startswith(prefix, autoescape=True)
    per_level = session.execute(select(User.depth - user.depth, func.count()).where(members)
                                .group_by(User.depth).order_by(User.depth)).all()
    since = now - timedelta(days=days)
    day = func.date(User.created_at)
    growth = session.execute(select(day, func.count()).where(members, User.created_at >= since)
                             .group_by(day).order_by(day)).all()
    earned = CommissionLine.amount_cents - CommissionLine.reversed_cents
    sales = session.execute(
        select(CommissionLine.level, func.count(), func.sum(Attribution.amount_cents), func.sum(earned))
        .join(Attribution, Attribution.order_no == CommissionLine.order_no)
        .where(CommissionLine.user_id == user.id).group_by(CommissionLine.level).order_by(CommissionLine.level)).all()
    top = session.execute(
        select(Attribution.product_id, Product.title, func.sum(earned).label("earned"))
        .join(Attribution, Attribution.order_no == CommissionLine.order_no)
        .join(Product, Product.id == Attribution.product_id, isouter=True)
        .where(CommissionLine.user_id == user.id).group_by(Attribution.product_id, Product.title)
        .order_by(func.sum(earned).desc()).limit(10)).all()
    levels = [{"level": level, "members": count} for level, count in per_level]
    return {
        "user_id": user.id,
        "direct": next((l["members"] for l in levels if l["level"] == 1), 0),
        "indirect": sum(l["members"] for l in levels if l["level"] > 1),
        "levels": levels,
        "growth": [{"day": str(d), "joined": n} for d, n in growth],
        "sales_by_level": [{"level": lv, "orders": n, "sales_cents": int(s or 0), "commission_cents": int(e or 0)}
                           for lv, n, s, e in sales],
        "top_products": [{"product_id": pid, "title": title, "commission_cents": int(e or 0)} for pid, title, e in top],
    }


def team_page(session: Session, parent: User, page: int, per_page: int) -> dict:
    """One page of a member's direct invitees, each with the size of their own team."""
    rows = session.scalars(select(User).where(User.parent_id == parent.id).order_by(User.created_at, User.id)
                           .offset((page - 1) * per_page).limit(per_page)).all()
    total = session.scalar(select(func.count()).select_from(User).where(User.parent_id == parent.id))
    items = []
    for member in rows:
        team = session.scalar(select(func.count()).select_from(User).where(
            User.path.startswith(f"{member.path}{member.id}/", autoescape=True)))
        items.append({"user_id": member.id, "joined_at": member.created_at.isoformat(), "team_size": team,
                      "has_team": team > 0})
    return {"parent_id": parent.id, "page": page, "per_page": per_page, "total": total, "items": items}
