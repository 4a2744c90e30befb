import pytest

from services.delivery.tests.conftest import Shop


class ReferralShop(Shop):
    def __init__(self, tmp_path, **env):
        super().__init__(tmp_path, **env)
        self.referral = self.system.apps["referral"].test_client()

    def user(self, email, invite_code=None, **extra):
        r = self.referral.post("/referral/v1/users", json={"email": email, "invite_code": invite_code, **extra})
        assert r.status_code == 201, r.json
        return r.json

    def chain(self, n, prefix="u"):
        users, code = [], None
        for i in range(n):
            users.append(self.user(f"{prefix}{i}@example.com", code))
            code = users[-1]["invite_code"]
        return users

    def as_user(self, user):
        return {"Authorization": "Bearer " + user["token"]}

    def buy_as(self, pid, user=None, quantity=1, ref_code=None, email="buyer@example.com"):
        headers = self.as_user(user) if user else {}
        body = {"product_id": pid, "quantity": quantity, "email": email}
        if ref_code:
            body["ref_code"] = ref_code
        r = self.delivery.post("/delivery/v1/orders", json=body, headers=headers)
        assert r.status_code == 201, r.json
        order = r.json
        assert self.notify(order["order_no"], order["amount_cents"], "t-" + order["order_no"]).status_code == 200
        self.drain()
        return order

    def lines(self, user):
        r = self.referral.get(f"/referral/v1/users/{user['user_id']}/commissions", headers=self.as_user(user))
        assert r.status_code == 200, r.json
        return r.json["items"]

    def explain(self, order, user):
        r = self.referral.get(f"/referral/v1/orders/{order['order_no']}/explain?user_id={user['user_id']}",
                              headers=self.as_user(user))
        assert r.status_code == 200, r.json
        return r.json

    def commission_product(self, levels=(800, 400, 200), price=10000, cost=6000, cap_bps=None, keys=20, fee_bps=None):
        r = self.catalog.post("/catalog/v1/merchants", json={"name": "M", "email": "m@example.com",
                                                              **({"fee_bps": fee_bps} if fee_bps is not None else {})},
                              headers=self.admin)
        merchant = {"Authorization": "Bearer " + r.json["api_key"]}
        self.drain()
        pid = self.product(merchant, price_cents=price, cost_cents=cost,
                           commission={"levels_bps": list(levels), "cap_bps": cap_bps})
        self.import_keys(merchant, pid, [f"KEY-{pid}-{i}" for i in range(keys)])
        return merchant, pid


@pytest.fixture
def shop(tmp_path):
    return ReferralShop(tmp_path)
