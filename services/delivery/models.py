from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime
from shared.idempotency import idempotency_table
from shared.inbox import inbox_table
from shared.outbox import Outbox

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite only auto-increments INTEGER keys


class Base(DeclarativeBase):
    pass


outbox = Outbox(Base.metadata, producer="delivery")
inbox = inbox_table(Base.metadata)
idempotency = idempotency_table(Base.metadata)


class Product(Base):
    """Projection of catalog's product: what an order is priced and limited by."""
    __tablename__ = "products"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), index=True)
    title: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(Integer)
    cost_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    max_per_order: Mapped[int] = mapped_column(Integer)
    instructions: Mapped[str] = mapped_column(Text, default="")
    commission: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer)
    # delivery's own: how many reusable keys the vault holds (skips a query per order)
    reusable_keys: Mapped[int] = mapped_column(Integer, default=0)


class MerchantKey(Base):
    """Projection of catalog's merchant API key hashes, for merchant routes."""
    __tablename__ = "merchant_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(String(40), index=True)


class Merchant(Base):
    __tablename__ = "merchants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    fee_bps: Mapped[int] = mapped_column(Integer)
    # The buyer's e-mail carries the keys (True) or only the order link (the merchant's choice).
    mail_keys: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    version: Mapped[int] = mapped_column(Integer)


class CardKey(Base):
    """A secret in the vault; its status follows from where it is referenced: in the pool it
    is available, in an order it is reserved or sold, with ``retired_at`` never sold again."""
    __tablename__ = "card_keys"
    __table_args__ = (UniqueConstraint("product_id", "fingerprint", name="uq_card_keys_fingerprint"),
                      Index("ix_card_keys_reusable", "product_id", "reusable"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String(40))
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(64))
    reusable: Mapped[bool] = mapped_column(Boolean, default=False)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class KeyPool(Base):
    """Only the unsold one-time keys: claiming never steps over sold rows."""
    __tablename__ = "key_pool"
    __table_args__ = (Index("ix_key_pool_product", "product_id", "key_id"),)
    key_id: Mapped[int] = mapped_column(ForeignKey("card_keys.id"), primary_key=True, autoincrement=False)
    product_id: Mapped[str] = mapped_column(String(40))


class Order(Base):
    __tablename__ = "orders"
    # The expiry job and the restock only ever look for pending and awaiting-stock orders: partial
    # indexes hold just those (small however many orders there were), and a payment that moves an
    # order on writes no entry into them.
    __table_args__ = (Index("ix_orders_pending_expiry", "expires_at", postgresql_where=text("status = 'pending'"),
                            sqlite_where=text("status = 'pending'")),
                      Index("ix_orders_product_delivered", "product_id", "delivered_at"),
                      Index("ix_orders_awaiting_stock", "product_id", "paid_at",
                            postgresql_where=text("status = 'awaiting_stock'"),
                            sqlite_where=text("status = 'awaiting_stock'")))
    order_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(40))
    merchant_id: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    cost_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    # The terms in force when the buyer ordered, so every service settles the same order alike.
    fee_bps: Mapped[int] = mapped_column(Integer)
    commission: Mapped[dict] = mapped_column(JSON)
    email: Mapped[str] = mapped_column(String(254), index=True)
    status: Mapped[str] = mapped_column(String(24))
    provider: Mapped[str] = mapped_column(String(32))
    pay_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The language the buyer ordered in (zh-CN, en): their e-mail speaks it too.
    locale: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # The provider's id of the payment it started, when later calls need it (Stripe's session).
    payment_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # When the provider was last asked about a payment whose notice has not come (掉单).
    payment_checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    access_token_hash: Mapped[str] = mapped_column(String(64))
    query_password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ref_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    buyer_user_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(300), nullable=True)
    risk_decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)
    refunded_cents: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class OrderKey(Base):
    """A key reserved for or sold to an order. A one-time key appears here at most once
    (partial unique index): the database itself refuses to sell one key twice."""
    __tablename__ = "order_keys"
    __table_args__ = (
        Index("uq_order_keys_one_time", "key_id", unique=True,
              postgresql_where=text("NOT reusable"), sqlite_where=text("NOT reusable")),
        Index("ix_order_keys_order", "order_no", "position"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"))
    position: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int] = mapped_column(ForeignKey("card_keys.id"))
    reusable: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("provider", "txn_id", name="uq_payments_txn"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    txn_id: Mapped[str] = mapped_column(String(128))
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"), index=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    # applied: paid the order; duplicate: a second payment of a paid order (to refund by hand)
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Refund(Base):
    """A refund of an order (whole or some keys). Money the buyer paid goes back through the
    provider they paid with: the row is written with the refund itself, ``requested``, and
    the worker asks the provider (``refund_no`` is the provider's idempotency key), retrying
    with backoff: ``requested`` → ``succeeded`` | ``failed`` (a person may retry it).
    ``not_needed``: nothing was paid (an order refused before payment)."""
    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_due", "next_attempt_at", postgresql_where=text("status = 'requested'"),
                            sqlite_where=text("status = 'requested'")),
                      UniqueConstraint("refund_no", name="uq_refunds_refund_no"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    refund_no: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="not_needed", server_default="not_needed")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # The provider said no (not: never answered). Asked again, it would say no again to the same
    # refund number (providers keep the first answer per number), so a retry takes a new one.
    refused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    provider_refund_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class KeyReport(Base):
    """A buyer's report that a delivered key does not work: ``open`` until the merchant
    replaces the key (``replaced``) or answers otherwise. One open report per key."""
    __tablename__ = "key_reports"
    __table_args__ = (Index("ix_key_reports_order", "order_no", "position"),
                      Index("ix_key_reports_merchant_open", "merchant_id", "created_at",
                            postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"))
    merchant_id: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int] = mapped_column(ForeignKey("card_keys.id"))
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Mail(Base):
    """An e-mail to the buyer, written when an order is delivered (``delivered``) or a key is
    replaced (``replacement``, ``ref``: the new key's ``order_keys`` id) and sent by the
    worker with backoff: ``queued`` → ``sent`` | ``failed``. The body is composed when sent
    (it holds keys) and never stored; ``last_error`` is the server's answer, never the body.
    One mail per order, kind and ref: a redelivered event writes nothing."""
    __tablename__ = "mails"
    __table_args__ = (UniqueConstraint("order_no", "kind", "ref", name="uq_mails_order_kind"),
                      Index("ix_mails_due", "next_attempt_at", postgresql_where=text("status = 'queued'"),
                            sqlite_where=text("status = 'queued'")))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_no: Mapped[str] = mapped_column(ForeignKey("orders.order_no"))
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(40), default="", server_default="")
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class StockState(Base):
    """The last stock figures announced per product, so only changes are published."""
    __tablename__ = "stock_state"
    product_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    available: Mapped[int] = mapped_column(Integer)
    unlimited: Mapped[bool] = mapped_column(Boolean)
    low: Mapped[bool] = mapped_column(Boolean, default=False)


class RateLimit(Base):
    """Fixed-window counters shared by every API process (order look-ups)."""
    __tablename__ = "rate_limits"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigId)
    count: Mapped[int] = mapped_column(Integer)
