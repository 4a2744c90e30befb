"""catalog products: create, patch, read and list, with every refusal, and
catalog.product.upserted with a version that grows on every change."""
import pytest

from tests.kit import assert_error, bearer, create_merchant, create_product, outbox_events

URL = "/catalog/v1/products"
PAYLOAD_FIELDS = {"product_id", "merchant_id", "title", "price_cents", "cost_cents", "currency",
                  "status", "max_per_order", "commission", "instructions", "version"}


def test_create_product_with_defaults(catalog, merchant):
    response = catalog.post(URL, json={"title": "Steam key", "price_cents": 1999},
                            headers=bearer(merchant["api_key"]))
    assert response.status_code == 201
    p = response.get_json()
    assert p["id"].startswith("prd_") and p["merchant_id"] == merchant["id"]
    assert (p["title"], p["price_cents"], p["cost_cents"], p["currency"], p["max_per_order"]) == \
        ("Steam key", 1999, 0, "CNY", 10)
    assert p["status"] == "active" and p["description"] == "" and p["instructions"] == ""
    assert p["commission"] == {"levels_bps": [], "cap_bps": None}
    assert p["stock"] == 0 and p["stock_unlimited"] is False and p["stock_low"] is False
    assert p["sold"] == 0
    assert p["created_at"].endswith("+00:00")


def test_create_product_with_every_field(catalog, merchant):
    p = create_product(catalog, merchant["api_key"], title="VPN", description="1 month", price_cents=10000,
                       cost_cents=6000, currency="USD", max_per_order=3, instructions="Redeem at ...",
                       status="inactive", commission={"levels_bps": [800, 400, 200], "cap_bps": 5000})
    assert p["cost_cents"] == 6000 and p["currency"] == "USD" and p["max_per_order"] == 3
    assert p["commission"] == {"levels_bps": [800, 400, 200], "cap_bps": 5000}
    assert p["status"] == "inactive" and p["instructions"] == "Redeem at ..."


def test_create_product_auth(catalog, admin_headers, merchant):
    body = {"title": "t", "price_cents": 100}
    assert_error(catalog.post(URL, json=body), 401, "unauthorized")
    assert_error(catalog.post(URL, json=body, headers=bearer("lsk_unknown")), 401, "unauthorized")
    assert_error(catalog.post(URL, json=body, headers=admin_headers), 401, "unauthorized")  # not a merchant


@pytest.mark.parametrize("extra,field", [
    ({"cost_cents": 101}, "cost_cents"),
    ({"commission": {"levels_bps": [100, 100, 100, 100]}}, "commission"),
    ({"commission": {"levels_bps": [100, -1]}}, "commission"),
    ({"commission": {"levels_bps": [6000, 5000]}}, "commission"),
    ({"commission": {"levels_bps": [100], "cap_bps": -5}}, "commission"),
    ({"commission": {"cap_bps": 100}}, "commission"),
    ({"commission": {"levels_bps": [100], "extra": 1}}, "commission"),
    ({"price_cents": 0}, "price_cents"),
    ({"price_cents": -100}, "price_cents"),
    ({"price_cents": "100"}, "price_cents"),
    ({"price_cents": 1.5}, "price_cents"),
    ({"cost_cents": -1}, "cost_cents"),
    ({"currency": "cny"}, "currency"),
    ({"currency": "EURO"}, "currency"),
    ({"max_per_order": 0}, "max_per_order"),
    ({"status": "deleted"}, "status"),
    ({"title": ""}, "title"),
    ({"stock": 5}, "stock"),
    ({"merchant_id": "mer_other"}, "merchant_id"),
])
def test_create_product_validation(embedded, catalog, merchant, extra, field):
    before = len(outbox_events(embedded, "catalog", "catalog.product.upserted"))
    body = {"title": "t", "price_cents": 100, **extra}
    error = assert_error(catalog.post(URL, json=body, headers=bearer(merchant["api_key"])), 422, "invalid")
    assert field in error["fields"]
    assert len(outbox_events(embedded, "catalog", "catalog.product.upserted")) == before


def test_create_product_requires_title_and_price(catalog, merchant):
    error = assert_error(catalog.post(URL, json={}, headers=bearer(merchant["api_key"])), 422)
    assert set(error["fields"]) == {"title", "price_cents"}
    assert_error(catalog.post(URL, data="[]", content_type="application/json",
                              headers=bearer(merchant["api_key"])), 400, "bad_json")


def test_cost_equal_to_price_and_three_levels_are_allowed(catalog, merchant):
    p = create_product(catalog, merchant["api_key"], price_cents=100, cost_cents=100,
                       commission={"levels_bps": [0, 0, 10000]})
    assert p["cost_cents"] == 100 and p["commission"]["levels_bps"] == [0, 0, 10000]


def test_product_upserted_event(embedded, catalog, merchant):
    p = create_product(catalog, merchant["api_key"], price_cents=500, cost_cents=200,
                       commission={"levels_bps": [800, 400]})
    [event] = outbox_events(embedded, "catalog", "catalog.product.upserted")
    assert event["producer"] == "catalog" and event["correlation_id"] == p["id"]
    payload = event["payload"]
    assert set(payload) == PAYLOAD_FIELDS
    assert payload["product_id"] == p["id"] and payload["merchant_id"] == merchant["id"]
    assert (payload["price_cents"], payload["cost_cents"], payload["currency"]) == (500, 200, "CNY")
    assert payload["commission"] == {"levels_bps": [800, 400], "cap_bps": None}
    assert payload["version"] == 1 and payload["status"] == "active" and payload["max_per_order"] == 10


# -- PATCH -----------------------------------------------------------------------------------

def patch(catalog, product_id, api_key, body):
    return catalog.patch(f"{URL}/{product_id}", json=body, headers=bearer(api_key))


def test_patch_changes_only_what_is_sent_and_bumps_the_version(embedded, catalog, merchant, product):
    key = merchant["api_key"]
    response = patch(catalog, product["id"], key, {"price_cents": 12000, "title": "New title"})
    assert response.status_code == 200
    p = response.get_json()
    assert (p["price_cents"], p["title"]) == (12000, "New title")
    assert {k: p[k] for k in ("cost_cents", "currency", "max_per_order", "status", "created_at")} == \
        {k: product[k] for k in ("cost_cents", "currency", "max_per_order", "status", "created_at")}
    assert p["updated_at"] > product["updated_at"]
    patch(catalog, product["id"], key, {"commission": {"levels_bps": [500]}, "status": "inactive"})
    patch(catalog, product["id"], key, {"commission": None})
    events = outbox_events(embedded, "catalog", "catalog.product.upserted")
    assert [e["payload"]["version"] for e in events] == [1, 2, 3, 4]
    assert events[1]["payload"]["price_cents"] == 12000 and events[1]["payload"]["title"] == "New title"
    assert events[2]["payload"]["commission"] == {"levels_bps": [500], "cap_bps": None}
    assert events[2]["payload"]["status"] == "inactive"
    assert events[3]["payload"]["commission"] == {"levels_bps": [], "cap_bps": None}
    assert len({e["id"] for e in events}) == 4


def test_patch_cost_above_price_is_422_and_changes_nothing(embedded, catalog, merchant):
    key = merchant["api_key"]
    p = create_product(catalog, key, price_cents=1000, cost_cents=500)
    error = assert_error(patch(catalog, p["id"], key, {"cost_cents": 1001}), 422, "invalid")
    assert "cost_cents" in error["fields"]
    assert_error(patch(catalog, p["id"], key, {"price_cents": 499}), 422)
    assert_error(patch(catalog, p["id"], key, {"price_cents": 100, "cost_cents": 200}), 422)
    assert catalog.get(f"{URL}/{p['id']}").get_json()["price_cents"] == 1000
    assert len(outbox_events(embedded, "catalog", "catalog.product.upserted")) == 1
    ok = patch(catalog, p["id"], key, {"price_cents": 400, "cost_cents": 400})
    assert ok.status_code == 200


@pytest.mark.parametrize("body,field", [
    ({"commission": {"levels_bps": [1, 2, 3, 4]}}, "commission"),
    ({"commission": {"levels_bps": [-1]}}, "commission"),
    ({"price_cents": 0}, "price_cents"),
    ({"title": None}, "title"),
    ({"sold": 5}, "sold"),
    ({"version": 9}, "version"),
])
def test_patch_validation(catalog, merchant, product, body, field):
    error = assert_error(patch(catalog, product["id"], merchant["api_key"], body), 422, "invalid")
    assert field in error["fields"]


def test_patch_auth_and_ownership(embedded, catalog, admin_headers, merchant, product):
    other = create_merchant(catalog)
    url = f"{URL}/{product['id']}"
    assert_error(catalog.patch(url, json={"title": "x"}), 401, "unauthorized")
    assert_error(catalog.patch(url, json={"title": "x"}, headers=bearer("lsk_wrong")), 401)
    assert_error(catalog.patch(url, json={"title": "x"}, headers=admin_headers), 401)
    assert_error(patch(catalog, product["id"], other["api_key"], {"title": "stolen"}), 404, "not_found")
    assert_error(patch(catalog, "prd_missing", merchant["api_key"], {"title": "x"}), 404, "not_found")
    assert catalog.get(url).get_json()["title"] == product["title"]
    assert len(outbox_events(embedded, "catalog", "catalog.product.upserted")) == 1


# -- GET ---------------------------------------------------------------------------------------

def test_get_product(catalog, merchant, product):
    got = catalog.get(f"{URL}/{product['id']}")  # a buyer: everything but the cost
    assert got.status_code == 200 and got.get_json() == {k: v for k, v in product.items() if k != "cost_cents"}
    assert "stock" in got.get_json()
    assert_error(catalog.get(f"{URL}/prd_missing"), 404, "not_found")


def test_an_inactive_product_is_visible_only_to_its_merchant(catalog, merchant):
    p = create_product(catalog, merchant["api_key"], status="inactive")
    other = create_merchant(catalog)
    url = f"{URL}/{p['id']}"
    assert_error(catalog.get(url), 404)
    assert_error(catalog.get(url, headers=bearer(other["api_key"])), 404)
    assert catalog.get(url, headers=bearer(merchant["api_key"])).status_code == 200
    assert p["id"] not in [i["id"] for i in catalog.get(URL).get_json()["items"]]
    mine = catalog.get(URL, headers=bearer(merchant["api_key"])).get_json()["items"]
    assert p["id"] in [i["id"] for i in mine]
    theirs = catalog.get(URL, headers=bearer(other["api_key"])).get_json()["items"]
    assert p["id"] not in [i["id"] for i in theirs]


def test_list_pages_newest_first(catalog, merchant):
    made = [create_product(catalog, merchant["api_key"], title=f"p{i}")["id"] for i in range(5)]
    pages = [catalog.get(f"{URL}?per_page=2&page={n}").get_json() for n in (1, 2, 3, 4)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert all(p["total"] == 5 and p["per_page"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    seen = [i["id"] for p in pages for i in p["items"]]
    assert seen == list(reversed(made))
    default = catalog.get(URL).get_json()
    assert default["page"] == 1 and default["per_page"] == 20 and len(default["items"]) == 5


def test_list_filters_by_merchant(catalog, merchant):
    other = create_merchant(catalog)
    mine = create_product(catalog, merchant["api_key"])["id"]
    theirs = create_product(catalog, other["api_key"])["id"]
    listed = catalog.get(f"{URL}?merchant_id={other['id']}").get_json()
    assert [i["id"] for i in listed["items"]] == [theirs] and listed["total"] == 1
    assert {i["id"] for i in catalog.get(URL).get_json()["items"]} == {mine, theirs}
    assert catalog.get(f"{URL}?merchant_id=mer_none").get_json()["items"] == []


@pytest.mark.parametrize("query,field", [("page=0", "page"), ("page=x", "page"), ("per_page=0", "per_page"),
                                         ("per_page=101", "per_page"), ("sort=price", "sort")])
def test_list_validates_the_query(catalog, query, field):
    error = assert_error(catalog.get(f"{URL}?{query}"), 422, "invalid")
    assert field in error["fields"]


def test_wrong_methods_and_unknown_routes(catalog, product):
    assert_error(catalog.delete(f"{URL}/{product['id']}"), 405, "method_not_allowed")
    assert_error(catalog.put(URL), 405)
    assert_error(catalog.get("/catalog/v1/nothing"), 404, "not_found")


def test_operational_routes(catalog):
    assert catalog.get("/catalog/healthz").get_json() == {"status": "ok", "service": "catalog"}
    ready = catalog.get("/catalog/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": True, "bus": True}
    catalog.get(URL)
    text = catalog.get("/catalog/metrics").get_data(as_text=True)
    assert 'route="/catalog/v1/products",service="catalog",status="200"' in text


def test_every_consumer_accepts_catalogs_events(embedded, catalog, merchant):
    """The contract, checked from the producer's side: no consumer dead-letters what catalog says."""
    key = merchant["api_key"]
    p = create_product(catalog, key, cost_cents=100, commission={"levels_bps": [800, 400, 200], "cap_bps": 9000})
    patch(catalog, p["id"], key, {"price_cents": 20000, "status": "inactive"})
    catalog.post(f"/catalog/v1/merchants/{merchant['id']}/api-key", headers=bearer(key))
    embedded.hub.drain()
    assert {svc: len(bodies) for svc, bodies in embedded.bus.dead.items()} == dict.fromkeys(embedded.bus.dead, 0)


def test_the_storefronts_search_finds_words_in_titles_literally(catalog, merchant):
    key = merchant["api_key"]
    for title in ("Steam 100 元卡", "steam wallet", "Netflix 月卡", "100% off_card"):
        create_product(catalog, key, title=title)
    found = lambda q: sorted(p["title"] for p in catalog.get("/catalog/v1/products", query_string={"q": q})
                             .get_json()["items"])
    assert found("STEAM") == ["Steam 100 元卡", "steam wallet"]
    assert found("月卡") == ["Netflix 月卡"]
    assert found("100%") == ["100% off_card"]  # % and _ are not wildcards
    assert found("1_0") == []
    assert_error(catalog.get("/catalog/v1/products?q="), 422)


def test_a_shop_page_shows_the_merchants_name_and_nothing_private(catalog, merchant):
    r = catalog.get(f"/catalog/v1/shops/{merchant['id']}")
    assert r.status_code == 200 and r.get_json() == {"id": merchant["id"], "name": merchant["name"]}
    assert_error(catalog.get("/catalog/v1/shops/m_nope"), 404)


def test_a_products_cost_is_its_merchants_alone(catalog, merchant):
    p = create_product(catalog, merchant["api_key"], price_cents=500, cost_cents=200)
    other = create_merchant(catalog)
    for headers in ({}, bearer(other["api_key"])):
        assert "cost_cents" not in catalog.get(f"/catalog/v1/products/{p['id']}", headers=headers).get_json()
        listed = catalog.get("/catalog/v1/products", headers=headers).get_json()["items"]
        assert listed and all("cost_cents" not in item for item in listed)
    assert catalog.get(f"/catalog/v1/products/{p['id']}", headers=bearer(merchant["api_key"])).get_json()["cost_cents"] == 200
