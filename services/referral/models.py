from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime
from shared.inbox import inbox_table
from shared.outbox import Outbox

BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="referral")
inbox = inbox_table(Base.metadata)


class User(Base):
    """A buyer who may become a distributor. ``path`` lists every ancestor id, root first
    ("/a/b/c/"), so the upline is read from one row and the team is a prefix match."""
    __tablename__ = "users"
    __table_args__ = (Index("ix_users_path", "path", postgresql_ops={"path": "text_pattern_ops"}),
                      Index("ix_users_parent", "parent_id", "created_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    invite_code: Mapped[str] = mapped_column(String(16), unique=True)
    parent_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    path: Mapped[str] = mapped_column(Text, default="/")
    depth: Mapped[int] = mapped_column(Integer, default=0)
    bound_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The shop whose invite link made the current binding: its rule decides when a rebind may
    # happen (none: the operator's default).
    bound_merchant_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Setting(Base):
    """Operator settings that change without a redeploy (the binding rule for bindings made
    outside any merchant's shop)."""
    __tablename__ = "settings"
    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class Product(Base):
    """Projection of catalog's product: its commission rule."""
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(200))
    levels_bps: Mapped[list] = mapped_column(JSON)
    cap_bps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer)


class Merchant(Base):
    """Projection of catalog's merchant: the platform fee that bounds the margin, and the
    binding rule of its shop (permanent, or lock for ``binding_lock_days``)."""
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    fee_bps: Mapped[int] = mapped_column(Integer)
    binding_mode: Mapped[str] = mapped_column(String(16), default="permanent", server_default="permanent")
    binding_lock_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int] = mapped_column(Integer)


class Attribution(Base):
    """How one delivered order was attributed, frozen when it accrued: what every
    explanation of that order is read from, whatever the graph or the rule later become."""
    __tablename__ = "attributions"
    order_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(40))
    merchant_id: Mapped[str] = mapped_column(String(40))
    buyer_user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    ref_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # buyer_upline | ref_code | none
    chain: Mapped[list] = mapped_column(JSON)  # every ancestor considered, nearest first
    levels_bps: Mapped[list] = mapped_column(JSON)
    cap_bps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quantity: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    fee_cents: Mapped[int] = mapped_column(Integer)
    cost_cents: Mapped[int] = mapped_column(Integer)
    limit_cents: Mapped[int] = mapped_column(Integer)
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)
    settled: Mapped[bool] = mapped_column(default=False)  # payout released the hold
    delivered_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CommissionLine(Base):
    __tablename__ = "commission_lines"
    __table_args__ = (UniqueConstraint("order_no", "level", name="uq_commission_order_level"),
                      Index("ix_commission_user", "user_id", "id"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("attributions.order_no"))
    user_id: Mapped[str] = mapped_column(String(40))
    level: Mapped[int] = mapped_column(Integer)
    rate_bps: Mapped[int] = mapped_column(Integer)
    uncapped_cents: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    reversed_cents: Mapped[int] = mapped_column(Integer, default=0)
    # accrued -> released (hold over), held (risk flag) -> accrued | reversed, reversed (refund)
    status: Mapped[str] = mapped_column(String(16))
    flag_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # When risk last spoke about this line: an older flag or clearance arriving late is ignored.
    risk_event_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
