"""What risk handles. It publishes risk.order.assessed, risk.commission.{flagged,cleared,rejected}
and risk.withdrawal.assessed (domain.py, through the outbox)."""
from datetime import datetime

from shared import topology
from shared.inbox import Handlers

from . import domain

handlers = Handlers()


@handlers.on("catalog.product.upserted")
def on_product(session, event):
    domain.upsert_product(session, event["payload"])


@handlers.on("referral.user.registered")
def on_registered(session, event):
    domain.on_user_registered(session, event["payload"])


@handlers.on("referral.user.bound")
def on_bound(session, event):
    domain.on_user_bound(session, event["payload"])


@handlers.on("delivery.order.created")
def on_created(session, event):
    domain.on_order_created(session, event["payload"])


@handlers.on("delivery.order.paid")
def on_paid(session, event):
    domain.on_order_paid(session, event["payload"])


@handlers.on("delivery.order.delivered")
def on_delivered(session, event):
    domain.on_order_delivered(session, event["payload"])


if "delivery.order.refunded" in topology.CONSUMES["risk"]:  # once the topology routes refunds to risk
    @handlers.on("delivery.order.refunded")
    def on_refunded(session, event):
        domain.on_order_refunded(session, event["payload"])


@handlers.on("referral.commission.accrued")
def on_accrued(session, event):
    domain.on_commission_accrued(session, event["payload"], datetime.fromisoformat(event["occurred_at"]))


@handlers.on("payout.withdrawal.requested")
def on_withdrawal(session, event):
    domain.on_withdrawal_requested(session, event["payload"])
