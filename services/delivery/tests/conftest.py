"""delivery's tests drive the embedded Linkshop through ``tests.kit.Shop``."""
import pytest

from tests.kit import Shop, shop_maker


@pytest.fixture
def shop(backend, tmp_path):
    return Shop(tmp_path, backend)


@pytest.fixture
def make_shop(backend, tmp_path):
    return shop_maker(Shop, backend, tmp_path)
