"""What catalog handles. It publishes catalog.merchant.upserted and catalog.product.upserted
(from domain.py, through the outbox)."""
from shared.inbox import Handlers

from . import domain

handlers = Handlers()


@handlers.on("delivery.stock.changed")
def on_stock_changed(session, event):
    domain.apply_stock(session, event["payload"])


@handlers.on("delivery.stock.low")
def on_stock_low(session, event):
    domain.apply_stock(session, {**event["payload"], "low": True})


@handlers.on("delivery.order.delivered")
def on_order_delivered(session, event):
    domain.count_sale(session, event["payload"], refunded=False)


@handlers.on("delivery.order.refunded")
def on_order_refunded(session, event):
    domain.count_sale(session, event["payload"], refunded=True)
