"""Local stand-ins for payment providers' gateways, and a shop they can reach.

A fake gateway is a small Flask app served on a local port (``LocalServer``) that plays the
provider's part with keys the test generated: it receives the payment request the buyer is
sent to, "pays" (``pay``), sends the signed notice the way the real one does — resending
until it reads the answer the provider expects —, answers queries and refunds. Each fake
signs with its own code, written from the provider's documentation, never with the module
under test, so a mistake in ours fails the test instead of agreeing with itself.

``PayingShop`` is a ``Shop`` served over HTTP too (its ``LINKSHOP_PUBLIC_URL`` is its own
local address), so a gateway can deliver notices to it. Its tests commit for real on
PostgreSQL (``@pytest.mark.commits``): the notices arrive on the server's threads.
"""
from __future__ import annotations

import threading
import time

import requests
from werkzeug.serving import make_server

from .shops import Shop


class LocalServer:
    """A WSGI app on 127.0.0.1 at a free port, served by threads until ``close``. ``app``
    may be set after the port is known (a shop needs its URL before it is built)."""

    def __init__(self, app=None):
        self.app = app
        self._server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _dispatch(self, environ, start_response):
        return self.app(environ, start_response)

    def close(self):
        self._server.shutdown()
        self._server.server_close()


class FakeGateway:
    """What every fake provider shares: its server, the payments it was asked for, the
    notices it sent (and the answers it read), the refunds it made. ``lose_notices``: pay
    without notifying (a 掉单, for the query job to find). ``refuse_refunds``: answer refunds
    with the provider's refusal; ``fail_refunds``: that many refund calls answer 500 first."""

    def __init__(self, app):
        self.app = app
        self.server = LocalServer(app)
        self.url = self.server.url
        self.payments: dict[str, dict] = {}
        self.answers: list[tuple[int, str]] = []
        self.refunds: list[dict] = []
        self.lose_notices = False
        self.refuse_refunds = False
        self.fail_refunds = 0

    def deliver(self, send, accepted, attempts: int = 4, pause: float = 0.05) -> list[tuple[int, str]]:
        """Send a notice (``send()`` → response) until ``accepted(response)``, as gateways
        resend until they read their word for "received"; the answers read, in order."""
        read = []
        for _ in range(attempts):
            response = send()
            read.append((response.status_code, response.text))
            self.answers.append(read[-1])
            if accepted(response):
                break
            time.sleep(pause)
        return read

    def close(self):
        self.server.close()


class PayingShop(Shop):
    """A ``Shop`` reachable over HTTP at ``self.url``, with the providers ``env`` enables, and
    the steps the providers' tests share."""

    def __init__(self, tmp_path, backend=None, **env):
        self.server = LocalServer()
        super().__init__(tmp_path, backend, LINKSHOP_PUBLIC_URL=self.server.url, **env)
        self.server.app = self.system.wsgi
        self.url = self.server.url

    def seller(self, title="月卡 & <Gold>", price_cents=1234, keys=("K1", "K2", "K3", "K4"), **fields):
        """A merchant and a product of theirs with ``keys`` in stock: (merchant headers, product id)."""
        merchant, _ = self.merchant()
        pid = self.product(merchant, title=title, price_cents=price_cents, **fields)
        self.import_keys(merchant, pid, list(keys))
        return merchant, pid

    def notices(self, provider, outcome):
        return self.metric("linkshop_payment_notices_total", provider=provider, outcome=outcome)

    # -- paying ------------------------------------------------------------------------------
    def order_with(self, provider, product_id, quantity=1, **extra):
        r = self.order(product_id, quantity, provider=provider, **extra)
        assert r.status_code == 201, r.json
        return r.json

    def paid_order(self, provider, gateway, product_id, answered, quantity=1):
        """An order paid through ``gateway``: the buyer opens its pay page (where it has one) and
        pays, the gateway's notice is ``answered`` (its list of answers read) and taken."""
        order = self.order_with(provider, product_id, quantity)
        if order["payment"]["pay_url"]:
            assert gateway.open(order["payment"]["pay_url"]).status_code == 200
        assert gateway.pay(order["order_no"]) == answered
        self.drain()
        return order

    def check_payment(self, order, token=None):
        """The buyer back from paying: the order's page asks the provider (``token``: not the order's own)."""
        return self.delivery.post(f"/delivery/v1/orders/{order['order_no']}/payment/check"
                                  f"?token={token or order['access_token']}")

    # -- refunds -----------------------------------------------------------------------------
    def refund(self, order, merchant, **body):
        """The merchant asks for a refund (``body``: quantity, reason); the refund asked for."""
        r = self.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refund", json=body, headers=merchant)
        assert r.status_code == 201, r.json
        return r.json

    def refunds(self, order, merchant):
        r = self.delivery.get(f"/delivery/v1/orders/{order['order_no']}/refunds", headers=merchant)
        assert r.status_code == 200, r.json
        return r.json["refunds"]

    def refund_status(self, order, merchant):
        return [x["status"] for x in self.refunds(order, merchant)]

    def failed_refunds(self):
        """The admin's list of refunds the provider did not make."""
        r = self.delivery.get("/delivery/v1/refunds?status=failed", headers=self.admin)
        assert r.status_code == 200, r.json
        return r.json["refunds"]

    def retry_refund(self, order, refund_id, headers):
        return self.delivery.post(f"/delivery/v1/orders/{order['order_no']}/refunds/{refund_id}/retry", headers=headers)

    def close(self):
        self.server.close()


def http():
    """A plain HTTP session, as a buyer's browser or a gateway would use."""
    return requests.Session()
