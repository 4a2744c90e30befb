"""delivery's tests drive the embedded Linkshop through ``tests.kit.Shop``; the payment
providers' tests through ``tests.kit.gateways.PayingShop`` and the fake gateway their module
names ``gateway``."""
import pytest

from tests.kit import Shop, shop_maker
from tests.kit.gateways import PayingShop


@pytest.fixture
def shop(backend, tmp_path):
    return Shop(tmp_path, backend)


@pytest.fixture
def make_shop(backend, tmp_path):
    return shop_maker(Shop, backend, tmp_path)


@pytest.fixture
def paying_shop(backend, tmp_path, gateway):
    """A ``PayingShop`` taking payments through the module's ``gateway``, its query job asking
    after every unpaid order at once."""
    shop = PayingShop(tmp_path, backend, LINKSHOP_PAYMENT_QUERY_AFTER_S=0, LINKSHOP_PAYMENT_QUERY_EVERY_S=0,
                      **gateway.env())
    yield shop
    shop.close()


@pytest.fixture
def seller(shop):
    """In a module whose ``shop`` is the ``paying_shop``: a merchant and a product at 12.34 with
    four keys, (merchant headers, product id)."""
    return shop.seller()
