"""The RabbitMQ topology, declared in one place (design.md §4).

Every worker declares all of it at start, idempotently, so that an event published before
its consumer ever ran is queued, not dropped as unroutable.

    linkshop.events            topic exchange, durable; routing key = event type
    <svc>.inbox                quorum queue bound to the types <svc> consumes; a message
                               redelivered more than DELIVERY_LIMIT times (a handler that
                               crashes its worker) dead-letters to <svc>.dead
    <svc>.retry.<ms>           one per backoff step: messages wait <ms>, then dead-letter
                               back into <svc>.inbox
    <svc>.dead                 poison messages and those that failed every attempt
"""
from __future__ import annotations

EXCHANGE = "linkshop.events"
DELIVERY_LIMIT = 20

CONSUMES: dict[str, tuple[str, ...]] = {
    "catalog": (
        "delivery.stock.changed",
        "delivery.stock.low",
        "delivery.order.delivered",
        "delivery.order.refunded",
    ),
    "delivery": (
        "catalog.merchant.upserted",
        "catalog.product.upserted",
        "delivery.order.delivered",
        "risk.order.assessed",
    ),
    "referral": (
        "catalog.merchant.upserted",
        "catalog.product.upserted",
        "delivery.order.delivered",
        "delivery.order.refunded",
        "risk.commission.flagged",
        "risk.commission.cleared",
        "risk.commission.rejected",
        "payout.settlement.released",
    ),
    "payout": (
        "catalog.merchant.upserted",
        "delivery.order.delivered",
        "delivery.order.refunded",
        "referral.commission.accrued",
        "referral.commission.reversed",
        "risk.commission.flagged",
        "risk.commission.cleared",
        "risk.withdrawal.assessed",
    ),
    "risk": (
        "catalog.product.upserted",
        "delivery.order.created",
        "delivery.order.paid",
        "delivery.order.delivered",
        "delivery.order.refunded",
        "referral.user.registered",
        "referral.user.bound",
        "referral.commission.accrued",
        "payout.withdrawal.requested",
    ),
}


def inbox_queue(service: str) -> str:
    return f"{service}.inbox"


def dead_queue(service: str) -> str:
    return f"{service}.dead"


def retry_queue(service: str, delay_ms: int) -> str:
    return f"{service}.retry.{delay_ms}"


def consumers_of(type_: str) -> list[str]:
    return [service for service, types in CONSUMES.items() if type_ in types]
