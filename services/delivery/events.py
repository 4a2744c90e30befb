"""What delivery handles. It publishes delivery.order.{created,paid,delivered,refunded} and
delivery.stock.{changed,low} from domain.py, through the outbox, and consumes its own
delivery.order.delivered to write the buyer's e-mail (sent by the worker's ``send_mails``)."""
from shared.events import utcnow
from shared.inbox import Handlers

from . import domain


def build_handlers(settings, mail: bool = False) -> Handlers:
    """``mail``: buyers get e-mail (SMTP, or files in embedded mode); without it a delivered
    order writes no mail."""
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

    @handlers.on("delivery.order.delivered")
    def on_delivered(session, event):
        if mail:
            domain.queue_mail(session, event["payload"]["order_no"], "delivered", utcnow())

    return handlers
