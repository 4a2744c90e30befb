"""What payout handles. It publishes payout.settlement.released and
payout.withdrawal.{requested,approved,paid,rejected} (domain.py, through the outbox)."""
from datetime import datetime

from shared.events import utcnow
from shared.inbox import Handlers

from . import domain
from .config import PayoutConfig


def _at(event) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def build_handlers(cfg: PayoutConfig) -> Handlers:
    handlers = Handlers()

    @handlers.on("catalog.merchant.upserted")
    def on_merchant(session, event):
        domain.upsert_merchant(session, event["payload"])

    @handlers.on("delivery.order.delivered")
    def on_delivered(session, event):
        domain.settle_delivered(session, cfg, event["payload"], _at(event), utcnow())

    @handlers.on("delivery.order.refunded")
    def on_refunded(session, event):
        domain.refund(session, event["payload"], utcnow())

    @handlers.on("referral.commission.accrued")
    def on_accrued(session, event):
        domain.accrue_commission(session, event["payload"], utcnow())

    @handlers.on("referral.commission.reversed")
    def on_reversed(session, event):
        domain.reverse_commission(session, event["payload"], event["id"], utcnow())

    @handlers.on("risk.commission.flagged")
    def on_flagged(session, event):
        domain.apply_risk(session, event["payload"], _at(event), True, event["id"], utcnow())

    @handlers.on("risk.commission.cleared")
    def on_cleared(session, event):
        domain.apply_risk(session, event["payload"], _at(event), False, event["id"], utcnow())

    @handlers.on("risk.withdrawal.assessed")
    def on_assessed(session, event):
        domain.apply_assessment(session, event["payload"], _at(event), utcnow())

    return handlers
