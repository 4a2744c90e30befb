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
    """A ``Shop`` reachable over HTTP at ``self.url``, with the providers ``env`` enables."""

    def __init__(self, tmp_path, backend=None, **env):
        self.server = LocalServer()
        super().__init__(tmp_path, backend, LINKSHOP_PUBLIC_URL=self.server.url, **env)
        self.server.app = self.system.wsgi
        self.url = self.server.url

    def order_with(self, provider, product_id, quantity=1, **extra):
        r = self.order(product_id, quantity, provider=provider, **extra)
        assert r.status_code == 201, r.json
        return r.json

    def refund_status(self, order, merchant):
        r = self.delivery.get(f"/delivery/v1/orders/{order['order_no']}/refunds", headers=merchant)
        assert r.status_code == 200, r.json
        return [x["status"] for x in r.json["refunds"]]

    def close(self):
        self.server.close()


def http():
    """A plain HTTP session, as a buyer's browser or a gateway would use."""
    return requests.Session()
