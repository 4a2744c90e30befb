"""payout's tests drive the embedded Linkshop through ``tests.kit.PayoutShop``."""
import pytest

from tests.kit import PayoutShop, shop_maker


@pytest.fixture
def shop(backend, tmp_path):
    return PayoutShop(tmp_path, backend)


@pytest.fixture
def make_shop(backend, tmp_path):
    return shop_maker(PayoutShop, backend, tmp_path)
