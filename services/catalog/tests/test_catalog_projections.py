"""catalog's projections from delivery's events: stock follows delivery.stock.changed only
when newer (``as_of``); sales counts survive duplicated delivery; any order of any events
with duplicates gives the same final state (design.md §8, invariant 4)."""
import json
import uuid
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select

from services.catalog.models import Product, inbox
from tests.kit import (create_merchant, create_product, envelope, inject, service_db,
                            stock_as_of)

URL = "/catalog/v1/products"


def stock_event(product_id, available, as_of, **extra):
    return envelope("delivery.stock.changed", {"product_id": product_id, "available": available,
                                               "as_of": as_of, **extra})


def sale_event(product_id, quantity, refunded=False, order_no=None):
    type_ = "delivery.order.refunded" if refunded else "delivery.order.delivered"
    payload = {"order_no": order_no or uuid.uuid4().hex[:12], "product_id": product_id,
               "merchant_id": "mer_x", "quantity": quantity, "amount_cents": 100 * quantity}
    if refunded:
        payload["reason"] = "bad key"
    return envelope(type_, payload)


def view(catalog, product_id, api_key=None):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return catalog.get(f"{URL}/{product_id}", headers=headers).get_json()


def no_dead(embedded):
    return all(not bodies for bodies in embedded.bus.dead.values())


def test_stock_changed_updates_the_product(embedded, catalog, product):
    inject(embedded, "catalog", stock_event(product["id"], 42, stock_as_of()))
    embedded.hub.drain()
    p = view(catalog, product["id"])
    assert p["stock"] == 42 and p["stock_unlimited"] is False
    assert no_dead(embedded)


def test_an_older_stock_reading_never_replaces_a_newer_one(embedded, catalog, product):
    inject(embedded, "catalog", stock_event(product["id"], 10, stock_as_of(0)))
    embedded.hub.drain()
    inject(embedded, "catalog", stock_event(product["id"], 99, stock_as_of(-5)))  # arrived late
    embedded.hub.drain()
    assert view(catalog, product["id"])["stock"] == 10
    inject(embedded, "catalog", stock_event(product["id"], 7, stock_as_of(5)))
    embedded.hub.drain()
    assert view(catalog, product["id"])["stock"] == 7


def test_reusable_stock_is_unlimited(embedded, catalog, product):
    inject(embedded, "catalog", stock_event(product["id"], 0, stock_as_of(), unlimited=True))
    embedded.hub.drain()
    p = view(catalog, product["id"])
    assert p["stock"] is None and p["stock_unlimited"] is True


def test_stock_low_marks_the_product(embedded, catalog, product):
    inject(embedded, "catalog", stock_event(product["id"], 50, stock_as_of(0)))
    embedded.hub.drain()
    inject(embedded, "catalog", envelope("delivery.stock.low", {"product_id": product["id"], "available": 3,
                                                                "threshold": 10, "as_of": stock_as_of(1)}))
    embedded.hub.drain()
    p = view(catalog, product["id"])
    assert p["stock"] == 3 and p["stock_low"] is True


def test_stock_for_an_unknown_product_is_consumed_quietly(embedded, catalog):
    inject(embedded, "catalog", stock_event("prd_unknown", 5, stock_as_of()))
    embedded.hub.drain()
    assert no_dead(embedded) and embedded.bus.pending("catalog") == 0


def test_a_bad_stock_event_is_retried_then_dead_and_leaves_no_trace(embedded, catalog, product):
    bad = envelope("delivery.stock.changed", {"product_id": product["id"], "as_of": stock_as_of()})  # no "available"
    inject(embedded, "catalog", bad)
    embedded.hub.drain()
    assert [json.loads(b)["id"] for b in embedded.bus.dead["catalog"]] == [bad["id"]]
    assert view(catalog, product["id"])["stock"] == 0
    with service_db(embedded, "catalog").read() as s:
        assert s.scalar(select(inbox.c.event_id).where(inbox.c.event_id == bad["id"])) is None


def test_poison_lands_in_catalog_dead_and_the_rest_flows(embedded, catalog, product):
    inject(embedded, "catalog", b"\x00not an envelope")
    inject(embedded, "catalog", {"id": str(uuid.uuid4()), "type": "delivery.stock.changed"})
    inject(embedded, "catalog", stock_event(product["id"], 5, stock_as_of()))
    embedded.hub.drain()
    assert len(embedded.bus.dead["catalog"]) == 2
    assert view(catalog, product["id"])["stock"] == 5


def test_delivered_and_refunded_counting_survives_duplicates(embedded, catalog, product):
    delivered = sale_event(product["id"], 3)
    body = json.dumps(delivered).encode()
    inject(embedded, "catalog", body)
    inject(embedded, "catalog", body)
    embedded.hub.drain()
    inject(embedded, "catalog", body)  # redelivered after it was processed
    embedded.hub.drain()
    assert view(catalog, product["id"])["sold"] == 3
    inject(embedded, "catalog", sale_event(product["id"], 2))  # another order counts
    embedded.hub.drain()
    assert view(catalog, product["id"])["sold"] == 5
    refunded = sale_event(product["id"], 1, refunded=True, order_no=delivered["payload"]["order_no"])
    for _ in range(3):
        inject(embedded, "catalog", refunded)
    embedded.hub.drain()
    assert view(catalog, product["id"])["sold"] == 4
    with service_db(embedded, "catalog").read() as s:
        p = s.get(Product, product["id"])
        assert (p.sold_count, p.refunded_count) == (5, 1)
    assert no_dead(embedded)


def test_a_refund_of_an_order_never_delivered_is_no_sale_undone(embedded, catalog, product):
    inject(embedded, "catalog", sale_event(product["id"], 2))
    rejected = sale_event(product["id"], 1, refunded=True)  # paid, then rejected by risk: no key sold
    rejected["payload"]["delivered"] = False
    inject(embedded, "catalog", rejected)
    embedded.hub.drain()
    assert view(catalog, product["id"])["sold"] == 2
    with service_db(embedded, "catalog").read() as s:
        assert s.get(Product, product["id"]).refunded_count == 0


def test_a_sale_without_a_product_is_ignored(embedded, catalog, product):
    refund = envelope("delivery.order.refunded", {"order_no": "X1", "amount_cents": 100, "quantity": 1,
                                                  "reason": "r"})
    inject(embedded, "catalog", refund)
    inject(embedded, "catalog", sale_event("prd_gone", 1))
    embedded.hub.drain()
    assert no_dead(embedded)
    assert view(catalog, product["id"])["sold"] == 0


# -- invariant 4, by property ------------------------------------------------------------------

aware_times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1),
                           timezones=st.just(timezone.utc))
readings = st.lists(st.tuples(aware_times, st.integers(0, 10**6)), min_size=1, max_size=6,
                    unique_by=lambda r: r[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(readings=readings, data=st.data())
def test_any_order_with_duplicates_ends_at_the_newest_stock(embedded, catalog, merchant, readings, data):
    product_id = create_product(catalog, merchant["api_key"])["id"]
    events = [stock_event(product_id, available, at.isoformat()) for at, available in readings]
    extra = data.draw(st.lists(st.sampled_from(range(len(events))), max_size=6), label="duplicates")
    order = data.draw(st.permutations(list(range(len(events))) + extra), label="order")
    drain_after = data.draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)), label="drains")
    for index, drain in zip(order, drain_after):
        inject(embedded, "catalog", events[index])
        if drain:
            embedded.hub.drain()
    embedded.hub.drain()
    newest = max(readings, key=lambda r: r[0])
    assert view(catalog, product_id)["stock"] == newest[1]
    assert no_dead(embedded)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sales=st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=6), data=st.data())
def test_any_order_with_duplicates_counts_each_sale_once(embedded, catalog, merchant, sales, data):
    product_id = create_product(catalog, merchant["api_key"])["id"]
    events = [sale_event(product_id, quantity, refunded) for quantity, refunded in sales]
    extra = data.draw(st.lists(st.sampled_from(range(len(events))), max_size=6), label="duplicates")
    for index in data.draw(st.permutations(list(range(len(events))) + extra), label="order"):
        inject(embedded, "catalog", events[index])
    embedded.hub.drain()
    expected = sum(-q if refunded else q for q, refunded in sales)
    assert view(catalog, product_id)["sold"] == expected
