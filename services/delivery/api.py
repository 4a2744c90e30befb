from __future__ import annotations

import html
import ipaddress
import secrets

from flask import Blueprint, jsonify, redirect, request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shared import idempotency as idem
from shared.auth import bearer_token, hash_secret, is_admin, verify_user_token
from shared.errors import ApiError, load_args, load_json, not_found
from shared.events import utcnow
from shared.openapi import documented
from shared.web import ctx

from . import domain, storage
from .models import CardKey, KeyPool, Order, Product, Refund, idempotency
from .payments import BadNotice, SignatureError
from .schemas import (KeyImportSchema, LookupSchema, OrderCreateSchema, OrderTokenSchema, RefundSchema,
                      ReplaceSchema)

bp = Blueprint("delivery", __name__, url_prefix="/delivery/v1")


class SCHEMAS:
    """One instance each: building a marshmallow schema costs more than loading a body with
    it, and ``load`` keeps no state on the instance, so threads share them."""
    KeyImportSchema = KeyImportSchema()
    OrderCreateSchema = OrderCreateSchema()
    LookupSchema = LookupSchema()
    ReplaceSchema = ReplaceSchema()
    RefundSchema = RefundSchema()
    OrderTokenSchema = OrderTokenSchema()


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
    }
    if with_keys:
        delivered = order.delivered_at is not None
        view["keys"] = domain.reveal_keys(session, ctx().extra["vault"], order) if delivered else []
        view["instructions"] = (product.instructions if product else "") if delivered else ""
    return view


def _pay_url(order_no: str, token: str) -> str:
    return f"{ctx().settings.public_url}/delivery/v1/payments/sandbox/pay/{order_no}?token={token}"


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
    if data.get("query_password"):  # slow on purpose, so it runs outside the transaction
        data["query_password_hash"] = domain.hash_query_password(data.pop("query_password"))
    for attempt in (1, 2, 3):
        try:
            order, token = domain.create_order(c.db, c.settings, data, _client(), "sandbox", utcnow())
            break
        except IntegrityError:  # the order number was taken (see new_order_no): a new one, a new transaction
            if attempt == 3:
                raise
    body = {"order_no": order.order_no, "access_token": token, "amount_cents": order.amount_cents,
            "currency": order.currency, "status": order.status, "quantity": order.quantity,
            "expires_at": order.expires_at.isoformat(),
            "payment": {"provider": order.provider, "pay_url": _pay_url(order.order_no, token)}}
    return jsonify(body), 201


def _readable_order(session, order_no: str) -> Order:
    """The order, to its buyer (access token) or its merchant; anyone else gets 404."""
    order = session.get(Order, order_no)
    token = request.args.get("token")
    if order is not None:
        if token and secrets.compare_digest(hash_secret(token), order.access_token_hash):
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
        return jsonify({"refunds": [{"refund_id": r.id, "quantity": r.quantity, "amount_cents": r.amount_cents,
                                     "reason": r.reason, "created_at": r.created_at.isoformat()} for r in rows]})


# -- payments --------------------------------------------------------------------------------

def _provider(name: str):
    provider = ctx().extra["providers"].get(name)
    if provider is None:
        raise not_found("payment provider")
    return provider


def _process_notice(provider, raw_body: bytes, headers) -> dict:
    from shared import metrics
    received = utcnow()  # the order counts as paid from the moment the notice arrived
    try:
        notice = provider.verify(raw_body, headers)
    except SignatureError:
        metrics.payment_callbacks_rejected.labels(provider.name, "bad_signature").inc()
        raise ApiError(401, "bad_signature", "the notification signature is missing or wrong") from None
    except BadNotice as exc:
        metrics.payment_callbacks_rejected.labels(provider.name, "bad_notice").inc()
        raise ApiError(400, "bad_notice", "the notification is malformed", exc.fields) from None
    c = ctx()
    outcome = domain.apply_payment(c.db, c.settings, provider.name, notice, received)
    return {"ok": True, "order_no": notice.order_no, "outcome": outcome}


@bp.post("/payments/<provider_name>/notify")
def payment_notify(provider_name):
    return jsonify(_process_notice(_provider(provider_name), request.get_data(), request.headers))


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
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
        _process_notice(provider, body, {provider.header: provider.sign(body)})
        return redirect(request.path + "?token=" + token, code=303)
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
