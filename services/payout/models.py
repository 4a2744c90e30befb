"""Payout's tables: the ledger (accounts, entries, postings, the chain head), what it knows of
orders and their split, risk flags, withdrawals, and projections of merchants' keys."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime
from shared.idempotency import idempotency_table
from shared.inbox import inbox_table
from shared.outbox import Outbox

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite only auto-increments INTEGER keys
Cents = BigInteger()


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="payout")
inbox = inbox_table(Base.metadata)
idempotency = idempotency_table(Base.metadata)


# -- projections ---------------------------------------------------------------------------------

class Merchant(Base):
    """Projection of catalog's merchant (newest version wins)."""
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)


class MerchantKey(Base):
    """Projection of catalog's merchant API key hashes: how a merchant is recognised here."""
    __tablename__ = "merchant_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), index=True)


# -- the ledger ----------------------------------------------------------------------------------

class Account(Base):
    """An account and its cached balance, updated in the transaction of every posting to it.

    ``reserved_cents`` is the part of an ``available`` balance promised to withdrawals that
    are not paid yet: what can still be withdrawn is ``balance_cents - reserved_cents``.
    A negative available balance is a debt (a clawback after the money was released)."""
    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    balance_cents: Mapped[int] = mapped_column(Cents, default=0)
    reserved_cents: Mapped[int] = mapped_column(Cents, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LedgerHead(Base):
    """One row: the last entry's sequence number and hash. Every append locks it, so entries
    form one chain in one order, whatever the number of writers."""
    __tablename__ = "ledger_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Cents)
    hash: Mapped[str] = mapped_column(String(64))


class Entry(Base):
    """A journal entry: never updated, never deleted. ``key`` makes posting it idempotent."""
    __tablename__ = "entries"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Cents, unique=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    kind: Mapped[str] = mapped_column(String(24))
    order_no: Mapped[str | None] = mapped_column(String(32), nullable=True)
    withdrawal_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    memo: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (Index("ix_postings_account", "account", "id"),
                      Index("ix_postings_order", "order_no"),
                      Index("ix_postings_entry", "entry_id"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("entries.id"))
    account: Mapped[str] = mapped_column(String(120))
    amount_cents: Mapped[int] = mapped_column(Cents)
    order_no: Mapped[str | None] = mapped_column(String(32), nullable=True)  # copied from the entry


# -- settlement ----------------------------------------------------------------------------------

class PayoutOrder(Base):
    """A delivered order as payout settles it: its amounts frozen from the delivered event,
    its hold, and how much of it was refunded (running totals, so nothing reverses twice)."""
    __tablename__ = "orders"
    order_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), index=True)
    product_id: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Cents)
    fee_bps: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Cents)
    currency: Mapped[str] = mapped_column(String(3))
    clearing_account: Mapped[str] = mapped_column(String(120))
    refunded_cents: Mapped[int] = mapped_column(Cents, default=0)
    refunded_fee_cents: Mapped[int] = mapped_column(Cents, default=0)
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime] = mapped_column(UtcDateTime())
    hold_until: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    release_runs: Mapped[int] = mapped_column(Integer, default=0)


class Share(Base):
    """One party's part of one order: level 0 is the merchant, 1..n the commission lines.

    ``amount_cents`` is what the order currently leaves that party (after commissions,
    refunds, reversals); it sits in the party's pending account until ``released``, then in
    its available account. Every later change to the share posts to where it sits."""
    __tablename__ = "shares"
    __table_args__ = (Index("ix_shares_unreleased", "order_no", postgresql_where=text("NOT released"),
                            sqlite_where=text("NOT released")),)
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    rate_bps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    accrued_cents: Mapped[int] = mapped_column(Cents)
    reversed_cents: Mapped[int] = mapped_column(Cents, default=0)
    amount_cents: Mapped[int] = mapped_column(Cents)
    released: Mapped[bool] = mapped_column(Boolean, default=False)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class RiskFlag(Base):
    """Risk's latest word on one user's line of one order. Kept even before the order is
    known here, and applied by the time risk spoke, so a late older event changes nothing."""
    __tablename__ = "risk_flags"
    order_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    flagged: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    risk_event_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- withdrawals ---------------------------------------------------------------------------------

class Withdrawal(Base):
    """requested → approved | review | rejected; review → approved | rejected;
    approved → rejected | review (risk spoke late) | sending | paid (the sandbox, at once);
    sending → paid | failed.

    ``sending``: the money is on its way and out of the owner's hands: a transfer was sent
    (``method`` alipay, asked about again at ``next_attempt_at`` until Alipay says paid or
    failed) or the withdrawal is in an exported batch (``method`` export, ``batch_id``) that
    the operator marks paid (with the bank's or Alipay's ``external_ref``) or failed. A failed
    withdrawal's money is back in the owner's available balance."""
    __tablename__ = "withdrawals"
    __table_args__ = (Index("ix_withdrawals_status", "status", "requested_at"),
                      Index("ix_withdrawals_owner", "owner", "requested_at"),
                      Index("ix_withdrawals_batch", "batch_id"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    account: Mapped[str] = mapped_column(String(120))
    amount_cents: Mapped[int] = mapped_column(Cents)
    fee_cents: Mapped[int] = mapped_column(Cents)
    destination: Mapped[str] = mapped_column(String(200))  # never in an event or a log line
    payee_name: Mapped[str | None] = mapped_column(String(100), nullable=True)  # neither is this
    destination_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list] = mapped_column(JSON, default=list)
    decided_by: Mapped[str | None] = mapped_column(String(16), nullable=True)  # auto | risk | admin
    risk_event_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    review_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # -- paying it out ---------------------------------------------------------------------
    method: Mapped[str | None] = mapped_column(String(16), nullable=True)  # sandbox | alipay | export
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # export's batch
    external_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)  # Alipay's order id, a bank's ref
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # calls to the provider
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)  # or why it failed
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
