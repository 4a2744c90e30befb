from __future__ import annotations

import html
import ipaddress
import logging
import secrets
from urllib.parse import parse_qsl, quote

from flask import Blueprint, Response, jsonify, redirect, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shared import idempotency as idem
from shared import metrics
from shared.auth import bearer_token, hash_secret, is_admin, verify_user_token
from shared.errors import ApiError, DomainError, load_args, load_json, not_found
from shared.events import utcnow
from shared.openapi import documented
from shared.web import ctx

from . import domain, storage
from .models import CardKey, KeyPool, KeyReport, Order, Product, Refund, idempotency
from .payments import BadNotice, Checkout, IgnoredNotice, NoticeRequest, ProviderError, SignatureError
from .schemas import (KeyImportSchema, KeyReportSchema, LookupSchema, OrderCreateSchema, OrderTokenSchema,
                      RefundSchema, ReplaceSchema)

bp = Blueprint("delivery", __name__, url_prefix="/delivery/v1")
log = logging.getLogger("linkshop.delivery")


class SCHEMAS:
    """One instance each: building a marshmallow schema costs more than loading a body with
    it, and ``load`` keeps no state on the instance, so threads share them."""
    KeyImportSchema = KeyImportSchema()
    OrderCreateSchema = OrderCreateSchema()
    LookupSchema = LookupSchema()
    ReplaceSchema = ReplaceSchema()
    RefundSchema = RefundSchema()
    OrderTokenSchema = OrderTokenSchema()
    KeyReportSchema = KeyReportSchema()


def _merchant_id(session, required: bool = True) -> str | None:
    token = bearer_token()
    merchant_id = domain.merchant_for_token(session, token)
    if merchant_id is None and required:
        if not token:
            raise ApiError(401, "unauthorized", "a merchant API key is required")
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    return merchant_id


def _client() -> dict:
    """The buyer's address: a forwarded one is believed only from a configured proxy."""
    trusted = ctx().settings.trusted_proxies
    remote = request.remote_addr or ""
    if remote in trusted:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in trusted:
                try:
                    remote = str(ipaddress.ip_address(hop))
                except ValueError:
                    pass
                break
    return {"ip": remote or None, "user_agent": (request.headers.get("User-Agent") or "")[:300] or None}


def _order_view(session, order: Order, with_keys: bool) -> dict:
    product = session.get(Product, order.product_id)
    view = {
        "order_no": order.order_no, "status": order.status, "product_id": order.product_id,
        "title": product.title if product else None, "quantity": order.quantity,
        "amount_cents": order.amount_cents, "currency": order.currency,
        "created_at": order.created_at.isoformat(), "expires_at": order.expires_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "delivered_at": order.delivered_at.isoformat() if order.delivered_at else None,
        "refunded_quantity": order.refunded_quantity, "refunded_cents": order.refunded_cents,
        "payment": {"provider": order.provider, "pay_type": order.pay_type},
        # Each refund's way back through the provider: requested, succeeded or failed.
        "refunds": [{"refund_id": r.id, "amount_cents": r.amount_cents, "quantity": r.quantity, "status": r.status}
                    for r in session.scalars(select(Refund).where(Refund.order_no == order.order_no)
                                             .order_by(Refund.id))] if order.refunded_cents else [],
        "locale": order.locale,
    }
    if with_keys:
        delivered = order.delivered_at is not None
        view["keys"] = domain.reveal_keys(session, ctx().extra["vault"], order) if delivered else []
        view["instructions"] = (product.instructions if product else "") if delivered else ""
        view["reports"] = domain.key_reports(session, order.order_no) if delivered else []
    return view


def order_url(order_no: str, token: str) -> str:
    """The buyer's page for an order, on the storefront (web/): it carries the access token,
    and every payment returns the buyer to it."""
    return f"{ctx().settings.public_url}/order/{order_no}?token={quote(token)}"


def _choose_provider(data: dict):
    """The provider the buyer chose among those enabled (default: the operator's first), and
    the way to pay it (default: its first)."""
    providers = ctx().extra["providers"]
    if not providers:
        raise ApiError(503, "no_payment_provider", "no payment provider is enabled; the operator must configure one")
    name = data.pop("provider", None) or next(iter(providers))
    provider = providers.get(name)
    if provider is None:
        raise ApiError(422, "unknown_provider", f"{name!r} is not an enabled payment provider",
                       {"provider": [f"must be one of: {', '.join(providers)}"]})
    pay_type = data.get("pay_type") or provider.pay_types[0]
    if pay_type not in provider.pay_types:
        raise ApiError(422, "unknown_pay_type", f"{name} offers no pay type {pay_type!r}",
                       {"pay_type": [f"must be one of: {', '.join(provider.pay_types)}"]})
    data["pay_type"] = pay_type
    return provider


# -- vault -----------------------------------------------------------------------------------

@bp.post("/products/<product_id>/keys")
@documented(body=KeyImportSchema)
def import_keys(product_id):
    c = ctx()
    data = load_json(SCHEMAS.KeyImportSchema)
    try:
        with c.db.write() as s:
            merchant_id = _merchant_id(s)
            product = s.get(Product, product_id)
            if product is None or product.merchant_id != merchant_id:
                raise not_found("product")
            result = domain.import_keys(s, c.extra["vault"], c.settings, product, data["keys"],
                                        data["reusable"], utcnow())
    except IntegrityError:
        raise ApiError(409, "conflict", "another import of the same keys ran at the same time; retry") from None
    return jsonify(result), 201


@bp.get("/products/<product_id>/keys")
def key_summary(product_id):
    c = ctx()
    with c.db.read() as s:
        merchant_id = _merchant_id(s)
        product = s.get(Product, product_id)
        if product is None or product.merchant_id != merchant_id:
            raise not_found("product")
        total = s.scalar(select(func.count()).select_from(CardKey).where(
            CardKey.product_id == product_id, CardKey.reusable.is_(False)))
        available = s.scalar(select(func.count()).select_from(KeyPool).where(KeyPool.product_id == product_id))
        retired = s.scalar(select(func.count()).select_from(CardKey).where(
            CardKey.product_id == product_id, CardKey.retired_at.is_not(None)))
        reusable = len(storage.reusable_key_ids(s, product_id))
        return jsonify({"product_id": product_id, "available": available, "retired": retired,
                        "taken": total - available - retired, "reusable": reusable,
                        "unlimited": reusable > 0})


# -- orders ----------------------------------------------------------------------------------

@bp.post("/orders")
@documented(body=OrderCreateSchema)
def create_order():
    c = ctx()
    data = load_json(SCHEMAS.OrderCreateSchema)
    token = bearer_token()
    if token:  # a logged-in buyer: the order is attributed to their place in the referral graph
        data["buyer_user_id"] = verify_user_token(c.settings.token_secret, token)
        if data["buyer_user_id"] is None:
            raise ApiError(401, "unauthorized", "the user token is invalid or expired")
    provider = _choose_provider(data)
    if data.get("query_password"):  # slow on purpose, so it runs outside the transaction
        data["query_password_hash"] = domain.hash_query_password(data.pop("query_password"))
    client = _client()
    for attempt in (1, 2, 3):
        try:
            order, token = domain.create_order(c.db, c.settings, data, client, provider.name, utcnow(),
                                               provider.currencies)
            break
        except IntegrityError:  # the order number was taken (see new_order_no): a new one, a new transaction
            if attempt == 3:
                raise
    page = order_url(order.order_no, token)
    try:  # after the order committed: a gateway's answer can take a second, never under a lock
        started = provider.start(Checkout(
            order_no=order.order_no, amount_cents=order.amount_cents, currency=order.currency,
            title=order.title, pay_type=order.pay_type,
            notify_url=f"{c.settings.public_url}/delivery/v1/payments/{provider.name}/notify",
            return_url=page, access_token=token, client_ip=client["ip"]))
    except ProviderError as exc:
        log.warning("payment provider %s could not start order %s: %s", provider.name, order.order_no, exc)
        with c.db.write() as s:
            domain.abandon_order(s, order.order_no)
        raise ApiError(502, "provider_unavailable", f"the payment provider {provider.name} did not answer; "
                       "try again or choose another way to pay") from None
    if started.ref:
        with c.db.write() as s:
            domain.set_payment_ref(s, order.order_no, started.ref)
    body = {"order_no": order.order_no, "access_token": token, "amount_cents": order.amount_cents,
            "currency": order.currency, "status": order.status, "quantity": order.quantity,
            "expires_at": order.expires_at.isoformat(), "order_url": page,
            "payment": {"provider": order.provider, "pay_type": order.pay_type, "pay_url": started.pay_url,
                        "qr_code": started.qr_code}}
    return jsonify(body), 201


def _readable_order(session, order_no: str) -> Order:
    """The order, to its buyer (the access token, or the link token of their e-mail) or its
    merchant; anyone else gets 404."""
    order = session.get(Order, order_no)
    token = request.args.get("token")
    if order is not None:
        if token and secrets.compare_digest(hash_secret(token), order.access_token_hash):
            return order
        if token and ctx().extra["vault"].check_order_link(order.order_no, token):
            return order
        if not token and domain.merchant_for_token(session, bearer_token()) == order.merchant_id:
            return order
    raise not_found("order")


@bp.get("/orders/<order_no>")
def get_order(order_no):
    c = ctx()
    with c.db.read() as s:
        return jsonify(_order_view(s, _readable_order(s, order_no), with_keys=True))


@bp.post("/orders/lookup")
@documented(body=LookupSchema)
def lookup_orders():
    c = ctx()
    data = load_json(SCHEMAS.LookupSchema)
    email = data["email"].strip().lower()
    now = utcnow()
    with c.db.write() as s:
        limit = c.settings.lookup_rate_per_minute
        over = domain.rate_limited(s, f"lookup:ip:{_client()['ip']}", limit, now)
        over = domain.rate_limited(s, f"lookup:email:{hash_secret(email)}", limit, now) or over
    if over:
        raise ApiError(429, "rate_limited", "too many look-ups; try again in a minute")
    with c.db.read() as s:
        orders = s.scalars(select(Order).where(Order.email == email).order_by(Order.created_at.desc()).limit(50)).all()
        if data["order_no"]:
            orders = [o for o in orders if o.order_no == data["order_no"]]
        items = []
        for order in orders:
            unlocked = bool(data["order_no"] and data["query_password"]
                            and domain.check_query_password(data["query_password"], order.query_password_hash))
            items.append(_order_view(s, order, with_keys=unlocked))
        return jsonify({"orders": items})


@bp.post("/orders/<order_no>/replace")
@documented(body=ReplaceSchema)
def replace_key(order_no):
    c = ctx()
    data = load_json(SCHEMAS.ReplaceSchema)
    with c.db.write() as s:
        merchant_id = _merchant_id(s)
        order = s.get(Order, order_no, with_for_update=True)
        if order is None or order.merchant_id != merchant_id:
            raise not_found("order")
        domain.replace_key(s, order, data["key_index"], utcnow())
    return jsonify({"order_no": order_no, "key_index": data["key_index"], "replaced": True})


@bp.post("/orders/<order_no>/reports")
@documented(body=KeyReportSchema, query=OrderTokenSchema)
def report_key(order_no):
    """The buyer reports a key that does not work (with the order's access token)."""
    c = ctx()
    data = load_json(SCHEMAS.KeyReportSchema)
    load_args(SCHEMAS.OrderTokenSchema)
    with c.db.write() as s:
        order = _readable_order(s, order_no)
        if request.args.get("token") is None:  # the merchant replaces keys; the buyer reports them
            raise not_found("order")
        s.refresh(order, with_for_update=True)
        report = domain.report_key(s, order, data["key_index"], data["reason"], utcnow())
        return jsonify({"report_id": report.id, "key_index": data["key_index"], "reason": report.reason,
                        "status": report.status, "created_at": report.created_at.isoformat()}), 201


@bp.get("/reports")
def list_key_reports():
    """The merchant's queue of bad-key reports, oldest first (``?status=open`` by default)."""
    c = ctx()
    status = request.args.get("status", "open")
    with c.db.read() as s:
        merchant_id = _merchant_id(s)
        rows = s.scalars(select(KeyReport).where(KeyReport.merchant_id == merchant_id, KeyReport.status == status)
                         .order_by(KeyReport.created_at).limit(500)).all()
        by_order = {}
        items = []
        for r in rows:
            if r.order_no not in by_order:
                by_order[r.order_no] = {x["report_id"]: x for x in domain.key_reports(s, r.order_no)}
            items.append({"order_no": r.order_no, **by_order[r.order_no][r.id]})
        return jsonify({"reports": items})


@bp.post("/orders/<order_no>/refund")
@documented(body=RefundSchema)
def refund_order(order_no):
    c = ctx()
    data = load_json(SCHEMAS.RefundSchema)
    key = idem.request_key()
    digest = idem.body_hash({"order_no": order_no, **data})
    scope = f"refund:{order_no}"
    try:
        with c.db.write() as s:
            admin = is_admin(c.settings.admin_token)
            merchant_id = None if admin else _merchant_id(s)
            order = s.get(Order, order_no, with_for_update=True)
            if order is None or not (admin or order.merchant_id == merchant_id):
                raise not_found("order")
            if key and (stored := idem.replay(s, idempotency, scope, key, digest)):
                return jsonify(stored[0]), stored[1]
            record = domain.refund(s, order, data["quantity"], data["reason"], utcnow(),
                                   window_s=None if admin else c.settings.refund_window_seconds)
            body = {"order_no": order_no, "refund_id": record.id, "amount_cents": record.amount_cents,
                    "quantity": record.quantity, "status": order.status}
            if key:
                idem.remember(s, idempotency, scope, key, digest, body, 201)
    except IntegrityError:
        with c.db.read() as s:
            stored = idem.replay(s, idempotency, scope, key, digest) if key else None
        if stored is None:
            raise
        return jsonify(stored[0]), stored[1]
    return jsonify(body), 201


@bp.get("/orders/<order_no>/refunds")
def list_refunds(order_no):
    c = ctx()
    with c.db.read() as s:
        order = _readable_order(s, order_no)
        rows = s.scalars(select(Refund).where(Refund.order_no == order.order_no).order_by(Refund.id)).all()
        return jsonify({"refunds": [_refund_view(r) for r in rows]})


def _refund_view(r: Refund) -> dict:
    return {"refund_id": r.id, "quantity": r.quantity, "amount_cents": r.amount_cents, "reason": r.reason,
            "created_at": r.created_at.isoformat(), "refund_no": r.refund_no, "provider": r.provider,
            "status": r.status, "attempts": r.attempts, "error": r.last_error,
            "settled_at": r.settled_at.isoformat() if r.settled_at else None}


@bp.post("/orders/<order_no>/refunds/<int:refund_id>/retry")
def retry_refund(order_no, refund_id):
    """The merchant or the operator asks again for a refund the provider refused."""
    c = ctx()
    with c.db.write() as s:
        admin = is_admin(c.settings.admin_token)
        merchant_id = None if admin else _merchant_id(s)
        order = s.get(Order, order_no)
        record = s.get(Refund, refund_id, with_for_update=True)
        if order is None or record is None or record.order_no != order_no \
                or not (admin or order.merchant_id == merchant_id):
            raise not_found("refund")
        domain.retry_refund(s, record, utcnow())
        return jsonify(_refund_view(record))


@bp.get("/refunds")
def failed_refunds():
    """The operator's list of refunds by status (``?status=failed`` by default): what the
    providers refused or never answered, to retry or settle by hand."""
    c = ctx()
    if not is_admin(c.settings.admin_token):
        raise ApiError(403, "forbidden", "the operator's token is required")
    status = request.args.get("status", "failed")
    with c.db.read() as s:
        rows = s.scalars(select(Refund).where(Refund.status == status).order_by(Refund.id.desc()).limit(200)).all()
        return jsonify({"refunds": [{"order_no": r.order_no, **_refund_view(r)} for r in rows]})


@bp.post("/orders/<order_no>/payment/check")
@documented(query=OrderTokenSchema)
def check_payment(order_no):
    """The buyer is back from paying and the order still says pending: ask the provider now
    (the notice may be late or lost) instead of waiting for the periodic check."""
    c = ctx()
    load_args(SCHEMAS.OrderTokenSchema)
    with c.db.read() as s:
        order = _readable_order(s, order_no)
        status, provider_name, ref = order.status, order.provider, order.payment_ref
    provider = c.extra["providers"].get(provider_name)
    # An expired order too: the buyer may have paid in its last seconds and the notice be lost.
    if status in ("pending", "expired") and provider is not None:
        with c.db.write() as s:
            over = domain.rate_limited(s, f"paycheck:{order_no}", 6, utcnow())
        if over:
            raise ApiError(429, "rate_limited", "the payment was checked a moment ago; try again in a minute")
        try:
            domain.recover_payment(c.db, c.settings, provider, order_no, ref)
        except ProviderError as exc:
            log.warning("payment provider %s could not be asked about order %s: %s", provider_name, order_no, exc)
            raise ApiError(502, "provider_unavailable", "the payment provider did not answer; try again shortly") \
                from None
    with c.db.read() as s:
        return jsonify(_order_view(s, _readable_order(s, order_no), with_keys=True))


# -- payments --------------------------------------------------------------------------------

@bp.get("/payments/providers")
def payment_providers():
    """The ways to pay the operator enabled, the default first: the storefront's choices."""
    providers = ctx().extra["providers"]
    return jsonify({"providers": [{"name": name, "pay_types": list(p.pay_types)} for name, p in providers.items()],
                    "default": next(iter(providers), None)})


def _provider(name: str):
    provider = ctx().extra["providers"].get(name)
    if provider is None:
        raise not_found("payment provider")
    return provider


def _notice_request() -> NoticeRequest:
    body = request.get_data(cache=True)
    params = {k: v for k, v in request.args.items()}
    if request.mimetype == "application/x-www-form-urlencoded":
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            pass  # the signature check refuses it
    return NoticeRequest(method=request.method, body=body, headers=request.headers, params=params)


def _take_notice(provider, notice_request: NoticeRequest) -> str:
    """Verify and apply one notice; every outcome and refusal is counted under its provider."""
    received = utcnow()  # the order counts as paid from the moment the notice arrived
    try:
        notice = provider.verify(notice_request)
    except SignatureError:
        metrics.payment_notices.labels(provider.name, "bad_signature").inc()
        raise ApiError(401, "bad_signature", "the notification signature is missing or wrong") from None
    except BadNotice as exc:
        metrics.payment_notices.labels(provider.name, "bad_notice").inc()
        raise ApiError(400, "bad_notice", "the notification is malformed", exc.fields) from None
    except IgnoredNotice:
        metrics.payment_notices.labels(provider.name, "ignored").inc()
        return "ignored"
    c = ctx()
    try:
        return domain.take_notice(c.db, c.settings, provider.name, notice, received)
    except DomainError as refused:
        raise ApiError.of(refused) from None


@bp.route("/payments/<provider_name>/notify", methods=["GET", "POST"])
def payment_notify(provider_name):
    """A provider's notice that the buyer paid, answered the way that provider expects."""
    provider = _provider(provider_name)
    if request.method not in provider.notice_methods:
        raise ApiError(405, "method_not_allowed", f"{provider_name} notices come as {', '.join(provider.notice_methods)}")
    try:
        answer = provider.answer(_take_notice(provider, _notice_request()), None)
    except ApiError as refused:
        answer = provider.answer(None, refused)
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}}
code{{display:block;padding:.6em;margin:.4em 0;background:#f3f3f3;word-break:break-all}}
button{{font-size:1.1em;padding:.5em 1.5em}}</style></head><body>{body}</body></html>"""


@bp.route("/payments/sandbox/pay/<order_no>", methods=["GET", "POST"])
@documented(query=OrderTokenSchema)
def sandbox_pay_page(order_no):
    """A person 'pays' in the browser; the page makes the same signed call a provider would."""
    c = ctx()
    provider = _provider("sandbox")
    token = load_args(SCHEMAS.OrderTokenSchema)["token"]
    with c.db.read() as s:
        order = _readable_order(s, order_no)
        view = _order_view(s, order, with_keys=True)
    if request.method == "POST" and order.status in ("pending", "expired"):
        body = provider.notice_body(order.order_no, order.amount_cents, order.currency,
                                    "sandbox-" + secrets.token_hex(8))
        _take_notice(provider, NoticeRequest("POST", body, {provider.header: provider.sign(body)}, {}))
        return redirect(order_url(order.order_no, token), code=303)  # back to the shop, as a provider does
    e = html.escape
    amount = f"{view['amount_cents'] / 100:.2f} {e(view['currency'])}"  # display only, never stored
    parts = [f"<h1>Order {e(order_no)}</h1><p>{e(view['title'] or '')} × {view['quantity']}: {amount}</p>",
             f"<p>Status: <b>{e(view['status'])}</b></p>"]
    if view["status"] in ("pending", "expired"):
        parts.append(f'<form method="post" action="?token={e(token)}"><button>Pay (sandbox)</button></form>')
    for key in view["keys"]:
        parts.append(f'<code>{e(key)}</code><button onclick="navigator.clipboard.writeText('
                     f'this.previousSibling.textContent)">Copy</button>')
    if view["keys"] and view["instructions"]:
        parts.append(f"<h2>How to use</h2><p>{e(view['instructions'])}</p>")
    return PAGE.format(title=f"Order {e(order_no)}", body="".join(parts))
