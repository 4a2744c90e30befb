from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from shared.db import UtcDateTime

from shared.idempotency import idempotency_table
from shared.inbox import inbox_table
from shared.outbox import Outbox


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="catalog")
inbox = inbox_table(Base.metadata)
idempotency = idempotency_table(Base.metadata)


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    status: Mapped[str] = mapped_column(String(20), default="active")
    fee_bps: Mapped[int] = mapped_column(Integer, default=200)
    # How long a referral binding made through this shop's invite links holds (design §6):
    # "permanent", or "lock" for binding_lock_days, after which a new invite may rebind.
    binding_mode: Mapped[str] = mapped_column(String(16), default="permanent", server_default="permanent")
    binding_lock_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The buyer's e-mail carries the keys (True) or only the order link: delivery sends it.
    mail_keys: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MerchantApiKey(Base):
    __tablename__ = "merchant_api_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Product(Base):
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    instructions: Mapped[str] = mapped_column(Text, default="")
    price_cents: Mapped[int] = mapped_column(Integer)
    cost_cents: Mapped[int] = mapped_column(Integer, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    max_per_order: Mapped[int] = mapped_column(Integer, default=10)
    status: Mapped[str] = mapped_column(String(20), default="active")
    commission: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Projections kept current from delivery's events.
    stock: Mapped[int] = mapped_column(Integer, default=0)
    stock_unlimited: Mapped[bool] = mapped_column(default=False)
    stock_low: Mapped[bool] = mapped_column(default=False)
    stock_as_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    sold_count: Mapped[int] = mapped_column(Integer, default=0)
    refunded_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
