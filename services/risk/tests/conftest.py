"""risk's tests drive the embedded Linkshop through ``tests.kit.RiskShop``."""
import pytest

from tests.kit import RiskShop, shop_maker


@pytest.fixture
def shop(backend, tmp_path):
    return RiskShop(tmp_path, backend)


@pytest.fixture
def make_shop(backend, tmp_path):
    return shop_maker(RiskShop, backend, tmp_path)
