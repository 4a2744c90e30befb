"""What referral handles. It publishes referral.user.registered, referral.user.bound,
referral.commission.accrued and referral.commission.reversed (domain.py, via the outbox)."""
from datetime import datetime

from shared.events import utcnow
from shared.inbox import Handlers

from . import domain

handlers = Handlers()


@handlers.on("catalog.product.upserted")
def on_product(session, event):
    domain.upsert_product(session, event["payload"])


@handlers.on("catalog.merchant.upserted")
def on_merchant(session, event):
    domain.upsert_merchant(session, event["payload"])


@handlers.on("delivery.order.delivered")
def on_delivered(session, event):
    domain.accrue(session, event["payload"], utcnow())


@handlers.on("delivery.order.refunded")
def on_refunded(session, event):
    domain.reverse_for_refund(session, event["payload"])


@handlers.on("risk.commission.flagged")
def on_flagged(session, event):
    domain.hold(session, event["payload"], datetime.fromisoformat(event["occurred_at"]))


@handlers.on("risk.commission.cleared")
def on_cleared(session, event):
    domain.clear(session, event["payload"], datetime.fromisoformat(event["occurred_at"]))


@handlers.on("risk.commission.rejected")
def on_rejected(session, event):
    p = event["payload"]
    for line in domain._risk_lines(session, p, datetime.fromisoformat(event["occurred_at"])):
        if line.status == "held":
            domain.reject(session, line, p.get("reason") or "rejected by risk review")


@handlers.on("payout.settlement.released")
def on_released(session, event):
    domain.release(session, event["payload"])
