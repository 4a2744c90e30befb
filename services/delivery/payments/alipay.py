"""支付宝 (Alipay open platform, RSA2): the buyer pays on Alipay's WAP or PC cashier, or scans
a QR code; Alipay tells us by an async notice; query and refund are API calls. The protocol
itself (signing requests, verifying answers and notices) is ``shared.alipay``.

- ``wap`` (the default: the storefront is mobile-first, and Alipay's WAP cashier also works in
  a desktop browser while the PC cashier's QR code cannot be scanned by the phone showing it),
  ``page`` (``alipay.trade.page.pay``, the PC cashier): the buyer is sent to the gateway with
  a signed GET. ``qr``: ``alipay.trade.precreate`` answers the QR code's content to show.
- The notice is a form POST to ``notify_url``, signed RSA2 by Alipay over every non-empty
  field but ``sign``/``sign_type``. ``TRADE_SUCCESS``/``TRADE_FINISHED`` mean paid; any other
  status (``WAIT_BUYER_PAY``, ``TRADE_CLOSED``) is a notice Alipay sends legitimately, so it
  is taken too. Alipay resends (8 times over 25 hours) until it reads ``success``. A refund's
  notice comes to the same URL with the payment's own trade number: a replay, acknowledged.
- ``alipay.trade.refund`` is idempotent on ``out_request_no`` (our refund number): a retry
  after a lost answer refunds once.

Settings (all or none): ``LINKSHOP_ALIPAY_GATEWAY`` (production
``https://openapi.alipay.com/gateway.do``, sandbox
``https://openapi-sandbox.dl.alipaydev.com/gateway.do``), ``LINKSHOP_ALIPAY_APP_ID``,
``LINKSHOP_ALIPAY_PRIVATE_KEY`` (the app's RSA key: PEM, bare base64 as Alipay's key tool
writes it, or a path to a PEM file), ``LINKSHOP_ALIPAY_PUBLIC_KEY`` (Alipay's public key for
this app, from the console: bare base64 or PEM).
"""
from __future__ import annotations



from shared.alipay import SUCCESS, AlipayClient, AlipayUnavailable, settings_from_env

from . import (Answer, BadNotice, Checkout, Notice, NoticeRequest, PaymentStart, Provider, ProviderError,
               RefundRequest, RefundResult, SignatureError, cents, yuan)

PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")  # FINISHED: paid, and past the refund period
BUSINESS_FAILED, UNAVAILABLE = "40004", "20000"
PAGES = {"wap": ("alipay.trade.wap.pay", "QUICK_WAP_WAY"), "page": ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY")}


def subject(title: str, order_no: str) -> str:
    """Alipay's ``subject``: at most 256 characters, and no ``/``, ``=`` or ``&`` (its docs
    forbid them: the cashier refuses such a title)."""
    cleaned = " ".join(title.translate(str.maketrans("/=&", "   ")).split())
    return cleaned[:256] or order_no


def _transient(answer: dict) -> bool:
    """Alipay's "try again with the same parameters": 20000, or 40004 ``ACQ.SYSTEM_ERROR``."""
    return answer.get("code") == UNAVAILABLE or str(answer.get("sub_code") or "").endswith("SYSTEM_ERROR")


def _why(answer: dict) -> str:
    return f"{answer.get('code')} {answer.get('sub_code') or answer.get('msg') or ''}".strip()


class AlipayProvider(Provider):
    name = "alipay"
    pay_types = ("wap", "page", "qr")
    currencies = frozenset({"CNY"})
    notice_methods = ("POST",)

    def __init__(self, client: AlipayClient):
        self.client = client

    # -- paying ------------------------------------------------------------------------------

    def start(self, checkout: Checkout) -> PaymentStart:
        biz = {"out_trade_no": checkout.order_no, "total_amount": yuan(checkout.amount_cents),
               "subject": subject(checkout.title, checkout.order_no)}
        if checkout.pay_type == "qr":
            answer = self._call("alipay.trade.precreate", biz, notify_url=checkout.notify_url)
            if answer.get("code") != SUCCESS or not answer.get("qr_code"):
                raise ProviderError(f"alipay precreate: {_why(answer)}")
            return PaymentStart(qr_code=str(answer["qr_code"]))
        method, product_code = PAGES[checkout.pay_type]
        biz["product_code"] = product_code
        if checkout.pay_type == "wap":
            biz["quit_url"] = checkout.return_url  # where the cashier's "back" button goes
        return PaymentStart(pay_url=self.client.page_url(method, biz, return_url=checkout.return_url,
                                                         notify_url=checkout.notify_url))

    # -- the notice --------------------------------------------------------------------------

    def verify(self, request: NoticeRequest) -> Notice:
        params = request.params
        # sign_type is outside the signed text: we take RSA2 only, never a notice saying RSA (SHA-1).
        if params.get("sign_type") != "RSA2" or not self.client.verify_notice(params):
            raise SignatureError("bad or missing signature")
        missing = [f for f in ("app_id", "out_trade_no", "trade_no", "total_amount", "trade_status")
                   if not params.get(f)]
        if missing:
            raise BadNotice({f: ["missing"] for f in missing})
        if params["app_id"] != self.client.app_id:  # signed by Alipay, but about another merchant's app
            raise BadNotice({"app_id": ["not this shop's app"]})
        status = params["trade_status"]
        return self._notice(params["out_trade_no"], params["trade_no"], params["total_amount"],
                            "paid" if status in PAID else status.lower()[:32],
                            params.get("buyer_id") or params.get("buyer_open_id") or params.get("buyer_logon_id"))

    @staticmethod
    def _notice(order_no, trade_no, total_amount, status, payer=None) -> Notice:
        if len(str(order_no)) > 32 or len(str(trade_no)) > 128:
            raise BadNotice({"out_trade_no": ["too long"]})
        payer = str(payer) if payer and len(str(payer)) <= 128 else None
        return Notice(order_no=str(order_no), amount_cents=cents(total_amount), currency="CNY",
                      txn_id=str(trade_no), status=status, payer_account=payer)

    def answer(self, outcome, error) -> Answer:
        # Taken, whatever it said (a WAIT_BUYER_PAY or TRADE_CLOSED notice too): Alipay would
        # otherwise resend it for 25 hours.
        if error is None:
            return Answer("success")
        return Answer("fail", 400)

    # -- the API -----------------------------------------------------------------------------

    def _call(self, method: str, biz: dict, **public) -> dict:
        """The verified answer of an API call; ``ProviderError`` when there is none to trust.
        ``public``: public parameters (``notify_url``)."""
        try:
            return self.client.call(method, biz, **public)
        except AlipayUnavailable as exc:  # its message names the method and the failure, never a key
            raise ProviderError(str(exc)) from None

    def query(self, order_no: str, ref: str | None) -> Notice | None:
        answer = self._call("alipay.trade.query", {"out_trade_no": order_no})
        if answer.get("code") == BUSINESS_FAILED and answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return None  # not scanned or not logged in at the cashier yet: no trade at Alipay
        if answer.get("code") != SUCCESS:
            raise ProviderError(f"alipay query: {_why(answer)}")
        if answer.get("trade_status") not in PAID:
            return None  # WAIT_BUYER_PAY, TRADE_CLOSED
        if str(answer.get("out_trade_no")) != order_no:
            raise ProviderError("alipay query answered about another order")
        try:
            return self._notice(order_no, answer["trade_no"], answer["total_amount"], "paid",
                                answer.get("buyer_user_id") or answer.get("buyer_open_id")
                                or answer.get("buyer_logon_id"))
        except (KeyError, BadNotice):
            raise ProviderError("alipay query answered without a trade number or amount") from None

    def refund(self, request: RefundRequest) -> RefundResult:
        biz = {"out_trade_no": request.order_no, "trade_no": request.txn_id,
               "refund_amount": yuan(request.amount_cents), "out_request_no": request.refund_no,
               "refund_reason": (request.reason or "")[:256]}
        answer = self._call("alipay.trade.refund", {k: v for k, v in biz.items() if v})
        if answer.get("code") == SUCCESS:  # fund_change "N": this out_request_no was refunded before
            return RefundResult(ok=True, provider_refund_id=request.refund_no)
        if answer.get("code") == BUSINESS_FAILED and not _transient(answer):
            error = f"{answer.get('sub_code') or ''} {answer.get('sub_msg') or answer.get('msg') or ''}".strip()
            return RefundResult(ok=False, error=error[:300] or "refused by Alipay")
        raise ProviderError(f"alipay refund: {_why(answer)}")


def from_env(settings, env, http) -> AlipayProvider | None:
    alipay = settings_from_env(env)
    return None if alipay is None else AlipayProvider(AlipayClient(alipay, http))
