"""referral's tests drive the embedded Linkshop through ``tests.kit.ReferralShop``."""
import pytest

from tests.kit import ReferralShop


@pytest.fixture
def shop(backend, tmp_path):
    return ReferralShop(tmp_path, backend)
