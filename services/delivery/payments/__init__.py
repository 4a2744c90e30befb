"""Payment providers: one module per provider behind one small interface (design.md §13).

A provider turns an order into a payment the buyer can make (``start``: a redirect URL or a
QR code's content), verifies the notice the provider sends when the buyer paid (``verify``),
answers the provider in the form it expects (``answer``), asks the provider about a payment
whose notice never came (``query``), and refunds (``refund``). Everything a provider says is
brought to one ``Notice``; the rules that decide what a notice does to an order live in
``domain`` and are the same for every provider.

Each provider is enabled by its own settings in the environment (``from_env``); a provider
half configured refuses to start rather than take payments it cannot verify. The order of
``LINKSHOP_PAYMENT_PROVIDERS`` (or of ``REGISTRY``) is the operator's preference: the first
enabled provider is an order's default.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from shared.config import ConfigError
from shared.config import settings_group as settings_of  # noqa: F401 (each provider's settings)


class SignatureError(Exception):
    """The notice is not signed by the provider (missing, malformed or wrong signature)."""


class BadNotice(Exception):
    """Signed, but not something we can read: a missing or malformed field."""

    def __init__(self, fields):
        super().__init__("bad notice")
        self.fields = fields


class IgnoredNotice(Exception):
    """Genuine (the signature holds) but none of this shop's business: an event type we do not
    act on, a payment we did not start. Acknowledged, so the provider stops resending it,
    counted as ``ignored``, and nothing changes."""


class ProviderError(Exception):
    """The provider could not be reached or answered with an error; worth retrying."""


@dataclass(frozen=True)
class Notice:
    """What every provider's notice (or query answer) says, in one shape. ``status`` is
    ``paid`` when the provider says the buyer paid in full; anything else is not a payment."""
    order_no: str
    amount_cents: int
    currency: str
    txn_id: str
    status: str
    payer_account: str | None = None  # the provider's id of the paying account, when it gives one


@dataclass(frozen=True)
class Checkout:
    """What a provider needs to start a payment for an order."""
    order_no: str
    amount_cents: int
    currency: str
    title: str
    pay_type: str
    notify_url: str   # where the provider sends its notice
    return_url: str   # where the buyer comes back to: the order's page, with its access token
    access_token: str
    client_ip: str | None = None


@dataclass(frozen=True)
class PaymentStart:
    """Where the buyer pays: a page to send them to, and/or a QR code's content to show.
    ``ref``: the provider's id for this payment, when later calls need it (Stripe's session)."""
    pay_url: str | None = None
    qr_code: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class NoticeRequest:
    """A notice as it arrived: ``params`` holds the query string and form fields (first value
    of each), ``body`` the raw bytes (signatures are computed over them)."""
    method: str
    body: bytes
    headers: dict
    params: dict


@dataclass(frozen=True)
class RefundRequest:
    refund_no: str         # ours, unique: the provider's idempotency key for this refund
    order_no: str
    txn_id: str            # the provider's transaction id of the payment being refunded
    amount_cents: int      # this refund
    order_amount_cents: int
    currency: str
    reason: str
    payment_ref: str | None = None


@dataclass(frozen=True)
class RefundResult:
    """``ok``: the provider accepted (or already had) this refund. Not ok: it refused it for
    good (``error`` says why); a transient failure raises ``ProviderError`` instead."""
    ok: bool
    provider_refund_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Answer:
    """The HTTP answer a provider expects to a notice."""
    body: str
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"


class Provider:
    """The interface every provider module implements. ``pay_types``: the ways to pay it
    offers (the first is the default); ``currencies``: those it takes (None: any)."""

    name = ""
    pay_types: tuple[str, ...] = ("default",)
    currencies: frozenset[str] | None = None
    notice_methods: tuple[str, ...] = ("POST",)

    def start(self, checkout: Checkout) -> PaymentStart:
        raise NotImplementedError

    def verify(self, request: NoticeRequest) -> Notice:
        """The notice's content if its signature holds; ``SignatureError``, ``BadNotice``, or
        ``IgnoredNotice`` for a genuine notice that is none of our business."""
        raise NotImplementedError

    def answer(self, outcome: str | None, error) -> Answer:
        """The answer to a notice: ``outcome`` when it was taken (applied, replayed, not a
        payment, ``ignored``...), else ``error`` (an ``ApiError``) saying why it was refused. A provider
        resends a notice until it reads its own word for "received"."""
        raise NotImplementedError

    def query(self, order_no: str, ref: str | None) -> Notice | None:
        """The provider's word on the order's payment (None: no payment made yet)."""
        return None

    def refund(self, request: RefundRequest) -> RefundResult:
        raise NotImplementedError


# -- money as providers write it ------------------------------------------------------------

def yuan(cents: int) -> str:
    """``1234`` → ``"12.34"``: the decimal amount most gateways take."""
    return f"{cents // 100}.{cents % 100:02d}"


def cents(amount: str) -> int:
    """``"12.34"`` → ``1234``; more than two decimals, a sign or garbage is a ``BadNotice``."""
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise BadNotice({"amount": ["not a number"]}) from None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")) or value > 10**12:
        raise BadNotice({"amount": ["not an amount in two decimals"]})
    return int(value * 100)


# -- the registry ---------------------------------------------------------------------------

def _registry():
    from . import alipay, epay, sandbox, stripe, wechatpay
    return {"epay": epay.from_env, "alipay": alipay.from_env, "wechatpay": wechatpay.from_env,
            "stripe": stripe.from_env, "sandbox": sandbox.from_env}


def load_providers(settings, env=None, http=None) -> dict[str, Provider]:
    """Every enabled provider by name, in the operator's order of preference. ``http``: the
    HTTP session providers call their gateways with (tests may pass their own)."""
    env = os.environ if env is None else env
    registry = _registry()
    wanted = [n.strip() for n in env.get("LINKSHOP_PAYMENT_PROVIDERS", "").split(",") if n.strip()]
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise ConfigError(f"LINKSHOP_PAYMENT_PROVIDERS names unknown providers {unknown}; known: {sorted(registry)}")
    order = wanted + [n for n in registry if n not in wanted]
    found = {}
    for name in order:
        provider = registry[name](settings, env, http or default_http())
        if provider is not None:
            found[name] = provider
    if wanted and (missing := [n for n in wanted if n not in found]):
        raise ConfigError(f"LINKSHOP_PAYMENT_PROVIDERS lists {missing}, which are not configured")
    return found


def default_http():
    import requests
    return requests.Session()


def pem_setting(value: str) -> str:
    """A key from the environment: PEM text (newlines may be written ``\\n``), or a path to a
    PEM file (a mounted Secret)."""
    value = value.strip()
    if "-----BEGIN" in value:
        return value.replace("\\n", "\n")
    try:
        with open(value) as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {value!r}: {exc.strerror}") from None


TIMEOUT = (3.05, 10)  # connect, read: a gateway slower than this is retried later

# urllib3 logs each request's URL at DEBUG, and some gateways take the merchant key in the
# query string (epay's api.php): never at any log level.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)
