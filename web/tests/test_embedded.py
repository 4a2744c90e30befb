"""make run serves the storefront at / beside the five services, each still at its prefix."""
import pytest
from werkzeug.test import Client

from services.embedded import banner, build_embedded


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    system = build_embedded({"LINKSHOP_VAR_DIR": str(tmp_path_factory.mktemp("web"))}, migrate=False)
    yield system
    for app in system.apps.values():
        app.extensions["linkshop"].db.dispose()


def test_the_storefront_is_the_default_and_services_keep_their_prefixes(system):
    client = Client(system.wsgi)
    home = client.get("/")
    assert home.status_code == 200 and home.mimetype == "text/html"
    assert "Content-Security-Policy" in home.headers
    assert client.get("/product/p-1").mimetype == "text/html"
    assert client.get("/order/X?token=t").headers["Cache-Control"] == "no-store"
    products = client.get("/catalog/v1/products")
    assert products.status_code == 200 and "items" in products.get_json()
    assert client.get("/delivery/healthz").get_json()["service"] == "delivery"
    assert client.get("/delivery/v1/orders/nope?token=x").get_json()["error"]["code"] == "not_found"
    assert b"linkshop_" in client.get("/metrics").data  # the process's metrics, as before


def test_the_banner_names_the_storefront(system):
    assert "storefront: http://127.0.0.1:8080/" in banner(system, "http://127.0.0.1:8080")
