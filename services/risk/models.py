"""Risk's own tables (rules, blocklist, decisions, what it has seen) and its projections of
orders, users and products, all fed by events: risk never reads another service's tables.

No raw email is kept: orders and users carry the SHA-256 of the normalised address (the
same hash referral publishes), plus the domain for domain blocklists.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime
from shared.inbox import inbox_table
from shared.outbox import Outbox

BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="risk")
inbox = inbox_table(Base.metadata)


class RuleSetting(Base):
    """The operator's settings of one rule; a rule without a row runs on its built-in defaults."""
    __tablename__ = "rules"
    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BlockEntry(Base):
    """kind: email (normalised), email_domain, ip (an address or CIDR network, normalised), device."""
    __tablename__ = "blocklist"
    __table_args__ = (UniqueConstraint("kind", "value", name="uq_blocklist_kind_value"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(254))
    reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Product(Base):
    """Projection of catalog's product, plus the running amount statistics of its orders."""
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    price_cents: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_per_order: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    orders_seen: Mapped[int] = mapped_column(Integer, default=0)
    amount_sum_cents: Mapped[int] = mapped_column(BigInteger, default=0)


class Order(Base):
    """What risk knows of an order: its sources (for velocity and matching) and its fate."""
    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_ip", "ip", "created_at"),
                      Index("ix_orders_device", "device_id", "created_at"),
                      Index("ix_orders_email", "email_hash", "created_at"),
                      Index("ix_orders_payer", "payer_account", "paid_at"),
                      Index("ix_orders_buyer", "buyer_user_id"),
                      Index("ix_orders_product", "product_id", "created_at"))
    order_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(40))
    merchant_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    quantity: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    email_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    email_domain: Mapped[str | None] = mapped_column(String(254), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    buyer_user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    ref_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the user risk believes placed it: buyer_user_id, else one matched by email, device or payer
    buyer_ref: Mapped[str | None] = mapped_column(String(40), nullable=True)
    payer_account: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    refunded: Mapped[bool] = mapped_column(Boolean, default=False)


class User(Base):
    """Projection of referral's user. A ``bound`` event may come before ``registered``:
    ``registered_at`` stays empty until the registration is seen."""
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_email", "email_hash"), Index("ix_users_device", "device_id"),
                      Index("ix_users_ip", "ip"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    ancestors: Mapped[list] = mapped_column(JSON, default=list)
    graph_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    email_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    registered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Fingerprint(Base):
    """Identifiers seen for a user: at registration and on the orders they placed logged in.
    kind: device, ip, email (hash), payer."""
    __tablename__ = "fingerprints"
    __table_args__ = (UniqueConstraint("user_id", "kind", "value", name="uq_fingerprint"),
                      Index("ix_fingerprints_value", "kind", "value"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(128))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())


class Earning(Base):
    """One commission line as referral announced it, with the buyer risk matched to it."""
    __tablename__ = "earnings"
    __table_args__ = (UniqueConstraint("order_no", "level", name="uq_earning_order_level"),
                      Index("ix_earnings_user", "user_id", "buyer_ref"),
                      Index("ix_earnings_order", "order_no"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(40))
    level: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    buyer_ref: Mapped[str | None] = mapped_column(String(40), nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Withdrawal(Base):
    __tablename__ = "withdrawals"
    __table_args__ = (Index("ix_withdrawals_destination", "destination_hash"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(80))
    user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Integer, default=0)
    destination_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Decision(Base):
    """One assessment and its fate. kind: order (subject = order_no), commission (subject =
    "order_no:user_id", a flagged line) or withdrawal (subject = withdrawal_id).
    ``rules_decision`` is what the rules said; ``decision`` is where it stands now."""
    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("kind", "subject", name="uq_decision_subject"),
                      Index("ix_decisions_order", "order_no"),
                      Index("ix_decisions_status", "decision", "created_at"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(120))
    order_no: Mapped[str | None] = mapped_column(String(32), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    withdrawal_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rules_decision: Mapped[str] = mapped_column(String(8))
    decision: Mapped[str] = mapped_column(String(8))  # approve | review | reject
    score: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list] = mapped_column(JSON)  # [{rule, score, reason}]
    decided_by: Mapped[str] = mapped_column(String(16))  # rules | operator
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    decided_at: Mapped[datetime] = mapped_column(UtcDateTime())
