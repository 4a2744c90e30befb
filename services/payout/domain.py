"""Settlement and withdrawal rules, free of Flask (design.md §7).

Where the money of one order is
---------------------------------
``delivery.order.delivered`` posts ``clearing → platform:fees + merchant pending``;
each commission line moves ``merchant → user pending``. Every party's part of an order is a
``Share`` (level 0 = merchant, 1..n = the lines) that sits in the party's *pending* account
until the hold ends, then the release job moves it to *available*. Any later change to a
share (refund, reversal) posts to the account where that share sits at that moment:
pending before its release, available after.

Refunds and debts
-----------------
A refund reverses its part of the order's postings pro rata: the platform fee by the running
total (``fee * refunded / amount``, floored), the rest from the merchant; referral's
``commission.reversed`` moves the commission back from the users to the merchant. After the
release this takes from *available*, which may go negative: a negative available balance is
the debt. Later earnings are released into the same account, so they pay the debt first,
with no extra bookkeeping, and no withdrawal is possible while available (minus what is
reserved for withdrawals in flight) is below zero. A full refund therefore nets every
account's postings for that order to zero, pending and available alike (design §8.7).

Withdrawals
-----------
A request reserves amount + fee on the owner's available account (nothing is posted yet), so
it cannot be spent twice. How an approved withdrawal is paid is ``LINKSHOP_PAYOUT_METHOD``:

- ``sandbox`` (embedded mode): paid at once, one entry ``available → payouts:sandbox +
  platform:withdrawal_fees``, as it always was.
- ``alipay`` and ``export``: three steps, each its own entry. *Sending* (a transfer sent, or
  the withdrawal in an exported batch): ``available → payouts:in_flight`` (amount + fee) and
  the reservation released. *Paid*: ``payouts:in_flight → payouts:<method>`` (amount) +
  ``platform:withdrawal_fees`` (fee). *Failed*: ``payouts:in_flight →`` the owner's available
  account, all of it, so the distributor can withdraw again. Each step happens once (its entry
  key is the withdrawal's and the step's), whoever reports it and however often.

Risk
----
A flagged user's share is not released until risk clears it. A flag that arrives after the
release moves that share back to pending (as referral holds a released line), so the final
state does not depend on which came first. Flags are applied by the time risk spoke, so an
older event arriving late changes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, exists, func, insert, select, update
from sqlalchemy.orm import Session

from shared.db import DriverStatement
from shared.errors import Conflict, Invalid
from shared.inbox import NotReady
from shared.projection import merchant_for_token as projected_merchant_for_token
from shared.projection import replace_key_hashes, upsert_newer

from . import ledger
from .config import PayoutConfig
from .models import (Account, Entry, Merchant, MerchantKey, PayoutOrder, Posting, RiskFlag, Share, Withdrawal,
                     outbox)
from .transfers import TransferOrder, TransferOutcome

PLATFORM_FEES = "platform:fees"
WITHDRAWAL_FEES = "platform:withdrawal_fees"
IN_FLIGHT = "payouts:in_flight"  # withdrawals sent (a transfer, an exported batch), not yet paid or failed
MERCHANT_LEVEL = 0
# A transfer without a final answer is asked about again this long after each attempt
# (the last repeats): Alipay settles most within seconds, a few within the hour.
TRANSFER_CHECK_AFTER_S = (30, 60, 120, 300, 600)
EXPORT_BATCH_MAX = 1000  # rows Alipay's batch transfer takes in one file


class BadEvent(ValueError):
    """An event that can never be applied (wrong currency, impossible amounts): it fails
    every retry and ends in ``payout.dead``, loudly, instead of booking wrong money."""


def merchant_owner(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def user_owner(user_id: str) -> str:
    return f"user:{user_id}"


def _cents(value, name: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadEvent(f"{name} must be a whole number of cents >= {minimum}, not {value!r}")
    return value


def parse_time(value: str | None, fallback: datetime) -> datetime:
    if not value:
        return fallback
    at = datetime.fromisoformat(value)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _where(share: Share) -> str:
    return ledger.account(share.owner, "available" if share.released else "pending")


# -- projections ---------------------------------------------------------------------------------

def upsert_merchant(session: Session, p: dict) -> None:
    if upsert_newer(session, Merchant, p["merchant_id"], p["version"], name=p.get("name") or "", status=p["status"]):
        replace_key_hashes(session, MerchantKey, p["merchant_id"], p["status"] == "active", p.get("api_key_hashes"))


def merchant_for_token(session: Session, token: str | None) -> str | None:
    return projected_merchant_for_token(session, MerchantKey, token)


# -- settlement ----------------------------------------------------------------------------------

def _order(session: Session, order_no: str) -> PayoutOrder | None:
    return session.get(PayoutOrder, order_no, with_for_update=True)


def _share(session: Session, order_no: str, level: int) -> Share | None:
    return session.get(Share, (order_no, level), with_for_update=True)


_orders_t, _shares_t = PayoutOrder.__table__, Share.__table__
# Every delivered order runs these (the ORM's get, add and flush cost more than the rest of
# the settlement): built once, run on the session's cursor after its autoflush.
_ORDER_SETTLED = DriverStatement(select(_orders_t.c.order_no).where(_orders_t.c.order_no == bindparam("order_no"))
                                 .with_for_update())
_INSERT_ORDER = DriverStatement(insert(_orders_t).values({c.name: bindparam(c.name) for c in _orders_t.columns}))
_INSERT_SHARE = DriverStatement(insert(_shares_t).values({c.name: bindparam(c.name) for c in _shares_t.columns}))


def settle_delivered(session: Session, cfg: PayoutConfig, p: dict, occurred_at: datetime, now: datetime) -> None:
    """clearing → platform fee + merchant pending, once per order (key ``delivered:<order_no>``)."""
    order_no = p["order_no"]
    if _ORDER_SETTLED.execute(session, {"order_no": order_no}).first() is not None:
        return
    amount = _cents(p["amount_cents"], "amount_cents")
    fee_bps = _cents(p.get("fee_bps"), "fee_bps")
    if fee_bps > 10000:
        raise BadEvent(f"fee_bps {fee_bps} is more than the whole amount")
    currency = p.get("currency") or cfg.currency
    if currency != cfg.currency:
        raise BadEvent(f"order {order_no} is in {currency}; this ledger books {cfg.currency} only")
    fee = amount * fee_bps // 10000  # floored: the remainder stays with the merchant
    delivered_at = parse_time(p.get("delivered_at"), occurred_at)
    clearing = ledger.account(f"provider:{p.get('provider') or cfg.clearing_provider}", "clearing")
    merchant = merchant_owner(p["merchant_id"])
    _INSERT_ORDER.execute(session, dict(
        order_no=order_no, merchant_id=p["merchant_id"], product_id=p.get("product_id") or "",
        quantity=_cents(p.get("quantity", 1), "quantity", 1), amount_cents=amount, fee_bps=fee_bps,
        fee_cents=fee, currency=currency, clearing_account=clearing, refunded_cents=0, refunded_fee_cents=0,
        refunded_quantity=0, delivered_at=delivered_at, hold_until=delivered_at + timedelta(seconds=cfg.hold_seconds),
        released_at=None, release_runs=0))
    _INSERT_SHARE.execute(session, dict(
        order_no=order_no, level=MERCHANT_LEVEL, owner=merchant, user_id=None, rate_bps=None,
        accrued_cents=amount - fee, reversed_cents=0, amount_cents=amount - fee, released=False, released_at=None))
    ledger.post(session, f"delivered:{order_no}", "delivered",
                [(clearing, -amount), (PLATFORM_FEES, fee), (ledger.account(merchant, "pending"), amount - fee)],
                now=now, order_no=order_no)


def accrue_commission(session: Session, p: dict, now: datetime) -> None:
    """merchant → each user's pending: one entry for the lines not booked before
    (key ``commission:<order_no>:<levels>``, e.g. ``commission:ORD1:1-2-3``)."""
    order_no = p["order_no"]
    order = _order(session, order_no)
    if order is None:
        raise NotReady(f"order {order_no} has not been delivered here yet")
    if p.get("merchant_id") not in (None, order.merchant_id):
        raise BadEvent(f"commission for {order_no} names merchant {p['merchant_id']}, the order {order.merchant_id}")
    merchant = _share(session, order_no, MERCHANT_LEVEL)
    booked = {level: cents for level, cents in session.execute(
        select(Share.level, Share.accrued_cents).where(Share.order_no == order_no, Share.level > MERCHANT_LEVEL))}
    accrued, levels, postings = sum(booked.values()), [], []
    for line in sorted(p.get("lines") or [], key=lambda l: l["level"]):
        level = _cents(line["level"], "level", 1)
        if level in booked:
            continue  # this line was booked before
        cents = _cents(line["amount_cents"], "amount_cents")
        accrued += cents
        if accrued > order.amount_cents - order.fee_cents:
            raise BadEvent(f"commission of {order_no} exceeds what the merchant received")
        share = Share(order_no=order_no, level=level, owner=user_owner(line["user_id"]), user_id=line["user_id"],
                      rate_bps=line.get("rate_bps"), accrued_cents=cents, reversed_cents=0, amount_cents=cents,
                      released=False)
        session.add(share)
        booked[level] = cents
        levels.append(level)
        merchant.amount_cents -= cents
        postings += [(_where(merchant), -cents), (_where(share), cents)]
    if levels:
        ledger.post(session, f"commission:{order_no}:{'-'.join(map(str, levels))}", "commission", postings,
                    now=now, order_no=order_no)


def reverse_commission(session: Session, p: dict, event_id: str, now: datetime) -> None:
    """user → merchant, each line's delta (key ``reversal:<event id>``): from where each share sits."""
    order_no = p["order_no"]
    order = _order(session, order_no)
    if order is None:
        raise NotReady(f"order {order_no} has not been delivered here yet")
    lines = [(line, _share(session, order_no, _cents(line["level"], "level", 1))) for line in p.get("lines") or []]
    if any(share is None for _, share in lines):
        raise NotReady(f"a reversed line of {order_no} has not accrued here yet")
    merchant = _share(session, order_no, MERCHANT_LEVEL)
    postings = []
    for line, share in lines:
        if share.user_id != line["user_id"]:
            raise BadEvent(f"reversal of {order_no} level {share.level} names another user")
        delta = min(_cents(line["amount_cents"], "amount_cents"), share.accrued_cents - share.reversed_cents)
        if delta <= 0:
            continue
        share.reversed_cents += delta
        share.amount_cents -= delta
        merchant.amount_cents += delta
        postings += [(_where(share), -delta), (_where(merchant), delta)]
    ledger.post(session, f"reversal:{event_id}", "reversal", postings, now=now, order_no=order_no,
                memo=str(p.get("reason") or "")[:300] or None)


def refund(session: Session, p: dict, now: datetime) -> None:
    """Reverse the refunded part: platform fee pro rata, the rest from the merchant's share.

    The event's running totals set the target, so a repeated, late or reordered refund event
    never reverses twice (key ``refund:<order_no>:<total refunded cents>``)."""
    if not p.get("delivered", True):
        return  # refunded before delivery: nothing was ever settled
    order_no = p["order_no"]
    order = _order(session, order_no)
    if order is None:
        raise NotReady(f"order {order_no} has not been delivered here yet")
    total = p.get("total_refunded_cents")
    if total is None:  # an older producer: only this refund's amount
        total = order.refunded_cents + _cents(p.get("amount_cents", 0), "amount_cents")
    target = min(order.amount_cents, max(order.refunded_cents, _cents(total, "total_refunded_cents")))
    order.refunded_quantity = min(order.quantity, max(order.refunded_quantity,
                                                      int(p.get("total_refunded_quantity") or 0)))
    if target <= order.refunded_cents:
        return
    fee_target = order.fee_cents * target // order.amount_cents
    delta, fee_delta = target - order.refunded_cents, fee_target - order.refunded_fee_cents
    order.refunded_cents, order.refunded_fee_cents = target, fee_target
    merchant = _share(session, order_no, MERCHANT_LEVEL)
    merchant.amount_cents -= delta - fee_delta
    ledger.post(session, f"refund:{order_no}:{target}", "refund",
                [(order.clearing_account, delta), (PLATFORM_FEES, -fee_delta), (_where(merchant), -(delta - fee_delta))],
                now=now, order_no=order_no, memo=str(p.get("reason") or "")[:300] or None)


def apply_risk(session: Session, p: dict, at: datetime, flagged: bool, event_id: str, now: datetime) -> None:
    """risk.commission.flagged / .cleared for one user's line(s) of one order."""
    order_no, user_id = p["order_no"], p["user_id"]
    order = _order(session, order_no)  # lock order first (may not be here yet: the flag is kept anyway)
    row = session.get(RiskFlag, (order_no, user_id), with_for_update=True)
    if row is not None and row.risk_event_at >= at:
        return  # risk said something newer already
    if row is None:
        row = RiskFlag(order_no=order_no, user_id=user_id)
        session.add(row)
    row.flagged, row.reason, row.risk_event_at = flagged, (p.get("reason") or None) if flagged else None, at
    session.flush()
    if not flagged or order is None:
        return  # a cleared share is released by the next run of the release job
    shares = session.scalars(select(Share).where(Share.order_no == order_no, Share.user_id == user_id,
                                                 Share.released.is_(True)).with_for_update()).all()
    postings = []
    for share in shares:
        postings += [(ledger.account(share.owner, "available"), -share.amount_cents),
                     (ledger.account(share.owner, "pending"), share.amount_cents)]
        share.released, share.released_at = False, None
    ledger.post(session, f"hold:{event_id}", "hold", postings, now=now, order_no=order_no, memo=row.reason)


def _flagged_share():
    return exists().where(RiskFlag.order_no == Share.order_no, RiskFlag.user_id == Share.user_id,
                          RiskFlag.flagged.is_(True))


def release_due(session: Session, now: datetime, limit: int = 200) -> int:
    """Release the shares whose hold is over and that risk does not hold; returns how many
    orders moved. Locks every order of the batch before touching the ledger head."""
    due = (select(Share.order_no).join(PayoutOrder, PayoutOrder.order_no == Share.order_no)
           .where(Share.released.is_(False), PayoutOrder.hold_until <= now, ~_flagged_share())
           .distinct().order_by(Share.order_no).limit(limit))
    order_nos = list(session.scalars(due))
    if not order_nos:
        return 0
    orders = session.scalars(select(PayoutOrder).where(PayoutOrder.order_no.in_(order_nos))
                             .order_by(PayoutOrder.order_no).with_for_update()).all()
    return sum(release_order(session, order, now) for order in orders)


def release_order(session: Session, order: PayoutOrder, now: datetime) -> bool:
    """pending → available for every due share of one order: one entry (``release:<order_no>``,
    then ``release:<order_no>:<n>`` for a line released later, e.g. once risk cleared it)."""
    if order.hold_until > now:
        return False
    flagged = set(session.scalars(select(RiskFlag.user_id).where(RiskFlag.order_no == order.order_no,
                                                                 RiskFlag.flagged.is_(True))))
    shares = session.scalars(select(Share).where(Share.order_no == order.order_no, Share.released.is_(False))
                             .order_by(Share.level).with_for_update()).all()
    due = [s for s in shares if s.user_id is None or s.user_id not in flagged]
    if not due:
        return False
    postings = []
    for share in due:
        postings += [(ledger.account(share.owner, "pending"), -share.amount_cents),
                     (ledger.account(share.owner, "available"), share.amount_cents)]
        share.released, share.released_at = True, now
    order.release_runs += 1
    key = f"release:{order.order_no}" + ("" if order.release_runs == 1 else f":{order.release_runs}")
    ledger.post(session, key, "release", postings, now=now, order_no=order.order_no)
    if order.released_at is None:
        order.released_at = now
        outbox.add(session, "payout.settlement.released",
                   {"order_no": order.order_no, "released_at": now.isoformat()}, order.order_no)
    return True


# -- withdrawals ---------------------------------------------------------------------------------

def destination_hash(secret: str, destination: str) -> str:
    """Keyed, so the same destination across accounts is visible to risk, but a phone number
    or a bank account cannot be guessed back from an event."""
    normalised = "".join(destination.split()).lower()
    return hmac.new(secret.encode(), b"linkshop.destination|" + normalised.encode(), hashlib.sha256).hexdigest()


def _withdrawal_event(session: Session, w: Withdrawal, status: str, **extra) -> None:
    kind, _, who = w.owner.partition(":")
    payload = {"withdrawal_id": w.id, "owner": w.owner, "amount_cents": w.amount_cents, "fee_cents": w.fee_cents,
               "destination_hash": w.destination_hash, "requested_at": w.requested_at.isoformat(),
               "status": status, "reasons": list(w.reasons or []), **extra}
    payload["user_id" if kind == "user" else "merchant_id"] = who
    outbox.add(session, f"payout.withdrawal.{status}", payload, w.id)


def spendable(session: Session, owner: str) -> int:
    balance, reserved = ledger.balance(session, ledger.account(owner, "available"))
    return balance - reserved


def request_withdrawal(session: Session, cfg: PayoutConfig, owner: str, amount: int, destination: str,
                       dest_hash: str, now: datetime, payee_name: str | None = None) -> Withdrawal:
    """Reserve amount + fee at once with one conditional UPDATE whose row count decides:
    two requests racing for the same money cannot both pass it. Real money (Alipay's transfer,
    a bank's or Alipay's batch) goes only to a named payee: Alipay checks the name against the
    account (and requires it for a transfer to a logon id), so it is asked for up front."""
    if cfg.payout_method != "sandbox" and not (payee_name or "").strip():
        raise Invalid("the payee's real name is required to pay a withdrawal out",
                      {"payee_name": ["the name on the receiving account is required"]}, code="payee_name_required")
    if amount < cfg.withdrawal_min_cents:
        raise Invalid(f"the minimum withdrawal is {cfg.withdrawal_min_cents} cents",
                      {"amount_cents": [f"must be at least {cfg.withdrawal_min_cents}"]}, code="below_minimum")
    if amount > cfg.withdrawal_max_cents:
        raise Invalid(f"the maximum withdrawal is {cfg.withdrawal_max_cents} cents",
                      {"amount_cents": [f"must be at most {cfg.withdrawal_max_cents}"]}, code="above_maximum")
    name = ledger.account(owner, "available")
    if spendable(session, owner) < 0:
        raise Conflict("the account carries a debt from a refund; later earnings pay it first", code="account_in_debt")
    fee = cfg.withdrawal_fee(amount)
    total = amount + fee
    accounts = Account.__table__
    reserved = session.execute(update(accounts).where(
        accounts.c.name == name, accounts.c.balance_cents - accounts.c.reserved_cents >= total)
        .values(reserved_cents=accounts.c.reserved_cents + total))
    if reserved.rowcount != 1:
        raise Conflict(f"{total} cents (amount and fee) exceed the available balance",
                      {"amount_cents": [f"amount + fee = {total} cents is more than available"]}, code="insufficient_funds")
    w = Withdrawal(id=f"wd_{secrets.token_hex(8)}", owner=owner, account=name, amount_cents=amount, fee_cents=fee,
                   destination=destination, destination_hash=dest_hash, status="requested", reasons=[],
                   requested_at=now, payee_name=(payee_name or "").strip() or None, attempts=0)
    session.add(w)
    session.flush()
    _withdrawal_event(session, w, "requested")
    return w


def _unreserve(session: Session, w: Withdrawal) -> None:
    accounts = Account.__table__
    session.execute(update(accounts).where(accounts.c.name == w.account)
                    .values(reserved_cents=accounts.c.reserved_cents - (w.amount_cents + w.fee_cents)))


def approve(session: Session, w: Withdrawal, by: str, now: datetime, reasons=()) -> None:
    w.status, w.decided_by, w.decided_at, w.review_since = "approved", by, now, None
    w.reasons = list(reasons)
    _withdrawal_event(session, w, "approved")


def to_review(session: Session, w: Withdrawal, by: str, now: datetime, reasons=()) -> None:
    w.status, w.decided_by, w.decided_at, w.review_since = "review", by, now, now
    w.reasons = list(reasons)


def reject(session: Session, w: Withdrawal, by: str, now: datetime, reasons=()) -> None:
    """The reservation goes back to the account; nothing was posted, so nothing is reversed."""
    _unreserve(session, w)
    w.status, w.decided_by, w.decided_at, w.review_since = "rejected", by, now, None
    w.reasons = list(reasons)
    _withdrawal_event(session, w, "rejected")


def decide_by_policy(session: Session, cfg: PayoutConfig, now: datetime, limit: int = 200) -> int:
    """Until risk assesses withdrawals: at or under the limit approve, over it wait for review."""
    if cfg.risk_required:
        return 0
    rows = session.scalars(select(Withdrawal).where(Withdrawal.status == "requested")
                           .order_by(Withdrawal.requested_at).limit(limit).with_for_update()).all()
    for w in rows:
        if w.amount_cents <= cfg.auto_approve_cents:
            approve(session, w, "auto", now, ["under the auto-approval limit"])
        else:
            to_review(session, w, "auto", now, ["over the auto-approval limit"])
    return len(rows)


def apply_assessment(session: Session, p: dict, at: datetime, now: datetime) -> None:
    w = session.get(Withdrawal, p["withdrawal_id"], with_for_update=True)
    if w is None:
        raise NotReady(f"withdrawal {p['withdrawal_id']} is not known here")
    if w.risk_event_at is not None and w.risk_event_at >= at:
        return
    w.risk_event_at = at
    decision, reasons = p["decision"], list(p.get("reasons") or [])
    if decision == "reject" and w.status in ("requested", "review", "approved"):
        reject(session, w, "risk", now, reasons)
    elif decision == "review" and w.status in ("requested", "approved"):
        to_review(session, w, "risk", now, reasons)
    elif decision == "approve" and w.status in ("requested", "review"):
        approve(session, w, "risk", now, reasons)


def payout_account(method: str) -> str:
    """Where paid withdrawals' money is booked, by how it left: ``payouts:alipay``..."""
    return ledger.account("payouts", method)


def pay(session: Session, cfg: PayoutConfig, w: Withdrawal, now: datetime) -> None:
    """The sandbox provider paid: available (its reservation) → payouts + withdrawal fee."""
    total = w.amount_cents + w.fee_cents
    ledger.post(session, f"withdrawal:{w.id}", "withdrawal",
                [(w.account, -total), (payout_account("sandbox"), w.amount_cents),
                 (WITHDRAWAL_FEES, w.fee_cents)], now=now, withdrawal_id=w.id)
    _unreserve(session, w)
    w.status, w.paid_at, w.method = "paid", now, "sandbox"
    _withdrawal_event(session, w, "paid", method="sandbox", external_ref=None, paid_at=now.isoformat())


def pay_approved(session: Session, cfg: PayoutConfig, now: datetime, limit: int = 100) -> int:
    """The sandbox's job; anywhere else real money must leave, so it pays nothing."""
    if cfg.payout_method != "sandbox":
        return 0
    rows = session.scalars(select(Withdrawal).where(Withdrawal.status == "approved")
                           .order_by(Withdrawal.requested_at).limit(limit).with_for_update()).all()
    for w in rows:
        pay(session, cfg, w, now)
    return len(rows)


def _scrubbed(w: Withdrawal, text: str | None) -> str | None:
    """A reason kept on the withdrawal and sent in its events never quotes the payee."""
    if not text:
        return None
    for secret in (w.destination, w.payee_name):
        if secret:
            text = text.replace(secret, "…")
    return text[:300]


def start_sending(session: Session, w: Withdrawal, method: str, now: datetime, batch_id: str | None = None) -> None:
    """approved → sending: the reservation becomes a posting ``available → payouts:in_flight``
    (amount + fee), in the transaction that commits before the money is sent."""
    if w.status != "approved":
        raise Conflict(f"the withdrawal is {w.status}, not approved", code="not_approved")
    total = w.amount_cents + w.fee_cents
    ledger.post(session, f"withdrawal:{w.id}:sending", "withdrawal_sending",
                [(w.account, -total), (IN_FLIGHT, total)], now=now, withdrawal_id=w.id)
    _unreserve(session, w)
    w.status, w.method, w.batch_id, w.sent_at = "sending", method, batch_id, now
    _withdrawal_event(session, w, "sending", method=method, batch_id=batch_id, sent_at=now.isoformat())


def mark_paid(session: Session, w: Withdrawal, external_ref: str | None, now: datetime) -> bool:
    """sending → paid: ``payouts:in_flight → payouts:<method>`` (amount) + the withdrawal fee.
    Told again with the same reference: nothing changes (False)."""
    if w.status == "paid" and w.method in ("alipay", "export") and w.external_ref == external_ref:
        return False
    if w.status == "paid":
        raise Conflict("the withdrawal was paid with another reference", code="already_paid")
    if w.status != "sending":
        raise Conflict(f"the withdrawal is {w.status}, not sending", code="not_sending")
    ledger.post(session, f"withdrawal:{w.id}:paid", "withdrawal_paid",
                [(IN_FLIGHT, -(w.amount_cents + w.fee_cents)), (payout_account(w.method), w.amount_cents),
                 (WITHDRAWAL_FEES, w.fee_cents)], now=now, withdrawal_id=w.id)
    w.status, w.paid_at, w.external_ref, w.last_error, w.next_attempt_at = "paid", now, external_ref, None, None
    _withdrawal_event(session, w, "paid", method=w.method, external_ref=external_ref, paid_at=now.isoformat())
    return True


def mark_failed(session: Session, w: Withdrawal, reason: str, now: datetime) -> bool:
    """sending → failed: ``payouts:in_flight →`` the owner's available account, amount and
    fee, so the distributor can withdraw it again. Told again: nothing changes (False)."""
    if w.status == "failed":
        return False
    if w.status != "sending":
        raise Conflict(f"the withdrawal is {w.status}, not sending", code="not_sending")
    total = w.amount_cents + w.fee_cents
    ledger.post(session, f"withdrawal:{w.id}:failed", "withdrawal_failed",
                [(IN_FLIGHT, -total), (w.account, total)], now=now, withdrawal_id=w.id)
    w.status, w.failed_at, w.next_attempt_at = "failed", now, None
    w.last_error = _scrubbed(w, reason) or "failed"
    _withdrawal_event(session, w, "failed", method=w.method, reason=w.last_error, failed_at=now.isoformat())
    return True


# -- paid by Alipay's transfer (transfers.py speaks to Alipay, worker.py calls it) ----------------

def _transfer_order(w: Withdrawal) -> TransferOrder:
    return TransferOrder(w.id, w.amount_cents, w.destination, w.payee_name)


def _check_after(attempts: int) -> timedelta:
    return timedelta(seconds=TRANSFER_CHECK_AFTER_S[min(max(attempts, 1), len(TRANSFER_CHECK_AFTER_S)) - 1])


def start_transfers(session: Session, cfg: PayoutConfig, now: datetime, limit: int = 20) -> list[TransferOrder]:
    """approved → sending for Alipay's transfer, committed before any transfer is sent: if the
    answer (or the process) is lost, the withdrawal is still ``sending``, its money in flight,
    and ``transfers_to_check`` finds it; nothing sends it under another ``out_biz_no``."""
    if cfg.payout_method != "alipay":
        return []
    rows = session.scalars(select(Withdrawal).where(Withdrawal.status == "approved")
                           .order_by(Withdrawal.requested_at, Withdrawal.id).limit(limit)
                           .with_for_update(skip_locked=True)).all()  # SQLite: one writer anyway
    for w in rows:
        start_sending(session, w, "alipay", now)
        w.attempts, w.next_attempt_at = 1, now + _check_after(1)
    return [_transfer_order(w) for w in rows]


def transfers_to_check(session: Session, now: datetime, limit: int = 20) -> list[TransferOrder]:
    """Transfers still without a final answer whose time to ask again has come, each counted
    as an attempt and given its next time now (so two workers do not ask at once)."""
    rows = session.scalars(select(Withdrawal).where(Withdrawal.status == "sending", Withdrawal.method == "alipay",
                                                    Withdrawal.next_attempt_at <= now)
                           .order_by(Withdrawal.next_attempt_at, Withdrawal.id).limit(limit)
                           .with_for_update(skip_locked=True)).all()
    for w in rows:
        w.attempts += 1
        w.next_attempt_at = now + _check_after(w.attempts)
    return [_transfer_order(w) for w in rows]


def record_transfer(session: Session, withdrawal_id: str, outcome: TransferOutcome, now: datetime) -> str:
    """What Alipay said about a withdrawal's transfer: paid, failed, or nothing final yet (kept
    as ``last_error``; asked again at ``next_attempt_at``). Returns the withdrawal's status."""
    w = session.get(Withdrawal, withdrawal_id, with_for_update=True)
    if w is None:
        return "unknown"
    if w.status != "sending" or w.method != "alipay":
        return w.status  # settled by an earlier answer
    if outcome.status == "paid":
        mark_paid(session, w, outcome.external_ref, now)
    elif outcome.status == "failed":
        mark_failed(session, w, outcome.reason or "refused by Alipay", now)
    else:
        w.last_error = _scrubbed(w, outcome.reason) or "no answer from Alipay yet"
    return w.status


# -- paid by an exported batch (the operator uploads it, then says how each went) -----------------

def export_batch(session: Session, cfg: PayoutConfig, now: datetime,
                 limit: int = EXPORT_BATCH_MAX) -> tuple[str, list[Withdrawal]]:
    """Every approved withdrawal (up to ``limit``, the oldest first) → sending, in one new
    batch; returns the batch id and its withdrawals, for the file (exports.py)."""
    if cfg.payout_method != "export":
        raise Conflict(f"withdrawals are paid by {cfg.payout_method} here, not exported", code="not_export_method")
    rows = session.scalars(select(Withdrawal).where(Withdrawal.status == "approved")
                           .order_by(Withdrawal.requested_at, Withdrawal.id).limit(limit)
                           .with_for_update(skip_locked=True)).all()
    batch_id = f"bt_{now.astimezone(timezone.utc):%Y%m%d%H%M%S}_{secrets.token_hex(4)}"
    for w in rows:
        start_sending(session, w, "export", now, batch_id)
    return batch_id, list(rows)


def batch_withdrawals(session: Session, batch_id: str) -> list[Withdrawal]:
    """An exported batch's withdrawals in the file's order (to download it again)."""
    return list(session.scalars(select(Withdrawal).where(Withdrawal.batch_id == batch_id)
                                .order_by(Withdrawal.requested_at, Withdrawal.id)))


def _exported(w: Withdrawal) -> None:
    if w.status not in ("sending", "paid", "failed"):
        raise Conflict(f"the withdrawal is {w.status}, not sending", code="not_sending")
    if w.method != "export":
        raise Conflict(f"the withdrawal was sent by {w.method}, which reports how it went itself",
                       code="not_exported")


def settle_exported(session: Session, w: Withdrawal, now: datetime, *, external_ref: str | None = None,
                    failure: str | None = None) -> bool:
    """The operator's word on one exported withdrawal: paid (with the bank's or Alipay's
    reference) or failed (why). Repeating the same word changes nothing (False)."""
    _exported(w)
    if failure is not None:
        return mark_failed(session, w, failure, now)
    return mark_paid(session, w, external_ref, now)


def oldest_review_seconds(session: Session, now: datetime) -> float:
    since = session.scalar(select(func.min(Withdrawal.review_since)).where(Withdrawal.status == "review"))
    if since is None:
        return 0.0
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    return max(0.0, (now - since).total_seconds())


# -- views ---------------------------------------------------------------------------------------

def _posting_view(row) -> dict:
    return {"seq": row.seq, "key": row.key, "kind": row.kind, "order_no": row.order_no,
            "withdrawal_id": row.withdrawal_id, "account": row.account, "amount_cents": int(row.amount_cents),
            "created_at": row.created_at.isoformat()}


def account_view(session: Session, owner: str, page: int, per_page: int) -> dict:
    accounts = session.execute(select(Account.name, Account.kind, Account.balance_cents, Account.reserved_cents)
                               .where(Account.owner == owner).order_by(Account.name)).all()
    kinds = {a.kind: a for a in accounts}
    pending = int(kinds["pending"].balance_cents) if "pending" in kinds else 0
    available, reserved = ((int(kinds["available"].balance_cents), int(kinds["available"].reserved_cents))
                           if "available" in kinds else (0, 0))
    free = available - reserved
    names = [a.name for a in accounts]
    query = (select(Entry.seq, Entry.key, Entry.kind, Entry.order_no, Entry.withdrawal_id, Entry.created_at,
                    Posting.account, Posting.amount_cents)
             .join(Entry, Entry.id == Posting.entry_id).where(Posting.account.in_(names)))
    total = session.scalar(select(func.count()).select_from(Posting).where(Posting.account.in_(names))) if names else 0
    rows = session.execute(query.order_by(Posting.id.desc()).offset((page - 1) * per_page).limit(per_page)).all() \
        if names else []
    return {
        "owner": owner,
        "pending_cents": pending,
        "available_cents": max(free, 0),
        "debt_cents": max(-free, 0),
        "reserved_cents": reserved,
        "accounts": [{"account": a.name, "balance_cents": int(a.balance_cents), "reserved_cents": int(a.reserved_cents)}
                     for a in accounts],
        "statement": {"page": page, "per_page": per_page, "total": total, "items": [_posting_view(r) for r in rows]},
    }


def split_view(session: Session, order: PayoutOrder) -> dict:
    rows = session.execute(select(Entry.seq, Entry.key, Entry.kind, Entry.order_no, Entry.withdrawal_id,
                                  Entry.created_at, Posting.account, Posting.amount_cents)
                           .join(Entry, Entry.id == Posting.entry_id).where(Posting.order_no == order.order_no)
                           .order_by(Posting.id)).all()
    postings = [_posting_view(r) for r in rows]
    by_account: dict[str, int] = {}
    for p in postings:
        by_account[p["account"]] = by_account.get(p["account"], 0) + p["amount_cents"]
    settled = sum(c for a, c in by_account.items() if a != order.clearing_account)
    shares = session.scalars(select(Share).where(Share.order_no == order.order_no).order_by(Share.level)).all()
    return {
        "order_no": order.order_no, "merchant_id": order.merchant_id, "currency": order.currency,
        "amount_cents": order.amount_cents, "fee_bps": order.fee_bps, "fee_cents": order.fee_cents,
        "refunded_cents": order.refunded_cents,
        "delivered_at": order.delivered_at.isoformat(), "hold_until": order.hold_until.isoformat(),
        "released_at": order.released_at.isoformat() if order.released_at else None,
        # what the order's money was split into, clearing left out: amount paid minus refunds
        "settled_cents": settled,
        "by_account": {a: c for a, c in sorted(by_account.items()) if c},
        "shares": [{"level": s.level, "owner": s.owner, "rate_bps": s.rate_bps, "accrued_cents": s.accrued_cents,
                    "reversed_cents": s.reversed_cents, "amount_cents": s.amount_cents, "released": s.released}
                   for s in shares],
        "postings": postings,
    }


def withdrawal_view(w: Withdrawal) -> dict:
    tail = w.destination[-4:] if len(w.destination) > 4 else ""
    return {"id": w.id, "owner": w.owner, "amount_cents": w.amount_cents, "fee_cents": w.fee_cents,
            "total_cents": w.amount_cents + w.fee_cents, "status": w.status,
            "destination": ("…" + tail) if tail else "…", "destination_hash": w.destination_hash,
            "reasons": list(w.reasons or []), "decided_by": w.decided_by,
            "requested_at": w.requested_at.isoformat(),
            "decided_at": w.decided_at.isoformat() if w.decided_at else None,
            "paid_at": w.paid_at.isoformat() if w.paid_at else None,
            "method": w.method, "batch_id": w.batch_id, "external_ref": w.external_ref, "attempts": w.attempts or 0,
            "last_error": w.last_error, "sent_at": w.sent_at.isoformat() if w.sent_at else None,
            "failed_at": w.failed_at.isoformat() if w.failed_at else None}
