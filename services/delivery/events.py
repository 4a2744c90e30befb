"""What delivery handles. It publishes delivery.order.{created,paid,delivered,refunded} and
delivery.stock.{changed,low} from domain.py, through the outbox."""
from shared.events import utcnow
from shared.inbox import Handlers

from . import domain


def build_handlers(settings) -> Handlers:
    handlers = Handlers()

    @handlers.on("catalog.product.upserted")
    def on_product(session, event):
        domain.upsert_product(session, event["payload"])

    @handlers.on("catalog.merchant.upserted")
    def on_merchant(session, event):
        domain.upsert_merchant(session, event["payload"])

    @handlers.on("risk.order.assessed")
    def on_risk_decision(session, event):
        domain.apply_risk_decision(session, settings, event["payload"], utcnow())

    return handlers
