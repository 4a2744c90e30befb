from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import or_, select

from shared.auth import bearer_token, is_admin, require_admin
from shared.errors import ApiError, load_args, load_json, not_found
from shared.openapi import documented
from shared.pagination import paginate
from shared.web import ctx

from . import domain
from .models import Merchant, Product
from .schemas import MerchantCreateSchema, MerchantPatchSchema, PageSchema, ProductCreateSchema, ProductPatchSchema

bp = Blueprint("catalog", __name__, url_prefix="/catalog/v1")


def merchant_view(m: Merchant) -> dict:
    return {"id": m.id, "name": m.name, "email": m.email, "status": m.status, "fee_bps": m.fee_bps,
            "binding": domain.binding_of(m), "mail_keys": m.mail_keys is not False}


def product_view(p: Product, owner: bool = True) -> dict:
    """``owner``: the product's merchant reads it; anyone else (a buyer, a distributor) does
    not see its cost."""
    view = {
        "id": p.id, "merchant_id": p.merchant_id, "title": p.title, "description": p.description,
        "instructions": p.instructions, "price_cents": p.price_cents, "cost_cents": p.cost_cents,
        "currency": p.currency, "max_per_order": p.max_per_order, "status": p.status,
        "commission": p.commission or {"levels_bps": [], "cap_bps": None},
        "stock": None if p.stock_unlimited else p.stock, "stock_unlimited": p.stock_unlimited,
        "stock_low": p.stock_low, "sold": p.sold_count - p.refunded_count,
        "created_at": p.created_at.isoformat(), "updated_at": p.updated_at.isoformat(),
    }
    if not owner:
        del view["cost_cents"]
    return view


def escape_like(text: str) -> str:
    """A buyer's search words taken literally: % and _ are not wildcards here."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def current_merchant(session) -> Merchant:
    token = bearer_token()
    if not token:
        raise ApiError(401, "unauthorized", "a merchant API key is required")
    merchant = domain.merchant_for_key(session, token)
    if merchant is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    return merchant


@bp.post("/merchants")
@documented(body=MerchantCreateSchema)
def create_merchant():
    c = ctx()
    require_admin(c.settings.admin_token)
    data = load_json(MerchantCreateSchema())
    with c.db.write() as s:
        merchant, api_key = domain.create_merchant(s, data["name"], data["email"], data["fee_bps"])
        body = {**merchant_view(merchant), "api_key": api_key}
    return jsonify(body), 201


@bp.get("/merchants/me")
def get_own_merchant():
    """The merchant the API key belongs to."""
    with ctx().db.read() as s:
        return jsonify(merchant_view(current_merchant(s)))


@bp.patch("/merchants/me")
@documented(body=MerchantPatchSchema)
def patch_own_merchant():
    """A merchant changes its own settings: the referral binding rule of its shop, and
    whether the buyer's e-mail carries the keys (``mail_keys``, default true) or only the link."""
    with ctx().db.write() as s:
        merchant_id = current_merchant(s).id
        return _patch_merchant(s, merchant_id)


@bp.patch("/merchants/<merchant_id>")
@documented(body=MerchantPatchSchema)
def patch_merchant(merchant_id):
    """The operator, or the merchant itself, changes a merchant's settings."""
    c = ctx()
    with c.db.write() as s:
        if not is_admin(c.settings.admin_token) and current_merchant(s).id != merchant_id:
            raise not_found("merchant")
        return _patch_merchant(s, merchant_id)


def _patch_merchant(s, merchant_id: str):
    changes = load_json(MerchantPatchSchema())
    merchant = s.get(Merchant, merchant_id, with_for_update=True, populate_existing=True)
    if merchant is None:
        raise not_found("merchant")
    domain.update_merchant(s, merchant, changes)
    return jsonify(merchant_view(merchant))


@bp.get("/merchants/<merchant_id>")
def get_merchant(merchant_id):
    c = ctx()
    with c.db.read() as s:
        merchant = s.get(Merchant, merchant_id)
        if merchant is None:
            raise not_found("merchant")
        if not is_admin(c.settings.admin_token):
            if current_merchant(s).id != merchant.id:
                raise not_found("merchant")
        return jsonify(merchant_view(merchant))


@bp.post("/merchants/<merchant_id>/api-key")
def rotate_key(merchant_id):
    c = ctx()
    with c.db.write() as s:
        merchant = s.get(Merchant, merchant_id, with_for_update=True)
        if merchant is None:
            raise not_found("merchant")
        if not is_admin(c.settings.admin_token) and current_merchant(s).id != merchant.id:
            raise not_found("merchant")
        api_key = domain.rotate_api_key(s, merchant)
    return jsonify({"id": merchant_id, "api_key": api_key}), 201


@bp.post("/products")
@documented(body=ProductCreateSchema)
def create_product():
    c = ctx()
    data = load_json(ProductCreateSchema())
    with c.db.write() as s:
        merchant = current_merchant(s)
        product = domain.create_product(s, merchant, data)
        body = product_view(product)
    return jsonify(body), 201


@bp.patch("/products/<product_id>")
@documented(body=ProductPatchSchema)
def patch_product(product_id):
    c = ctx()
    changes = load_json(ProductPatchSchema())
    with c.db.write() as s:
        merchant = current_merchant(s)
        product = s.get(Product, product_id, with_for_update=True)
        if product is None or product.merchant_id != merchant.id:
            raise not_found("product")
        domain.update_product(s, product, changes)
        body = product_view(product)
    return jsonify(body)


@bp.get("/products")
@documented(query=PageSchema)
def list_products():
    c = ctx()
    args = load_args(PageSchema())
    with c.db.read() as s:
        query = select(Product)
        token = bearer_token()
        merchant = domain.merchant_for_key(s, token) if token else None
        if merchant is not None:  # a merchant sees its own inactive products too
            query = query.where(or_(Product.status == "active", Product.merchant_id == merchant.id))
        else:
            query = query.where(Product.status == "active")
        if args["merchant_id"]:
            query = query.where(Product.merchant_id == args["merchant_id"])
        if args["q"]:  # the storefront's search box: words in the title, any case
            query = query.where(Product.title.ilike(f"%{escape_like(args['q'])}%", escape="\\"))
        own = merchant.id if merchant is not None else None
        return jsonify(paginate(s, query.order_by(Product.created_at.desc(), Product.id), args,
                                lambda p: product_view(p, owner=p.merchant_id == own)))


@bp.get("/products/<product_id>")
def get_product(product_id):
    c = ctx()
    with c.db.read() as s:
        product = s.get(Product, product_id)
        if product is None:
            raise not_found("product")
        token = bearer_token()
        merchant = domain.merchant_for_key(s, token) if token else None
        owner = merchant is not None and merchant.id == product.merchant_id
        if product.status != "active" and not owner:
            raise not_found("product")
        return jsonify(product_view(product, owner=owner))


@bp.get("/shops/<merchant_id>")
def get_shop(merchant_id):
    """A merchant's public face, for its shop page: the name buyers see, nothing private."""
    c = ctx()
    with c.db.read() as s:
        merchant = s.get(Merchant, merchant_id)
        if merchant is None or merchant.status != "active":
            raise not_found("shop")
        return jsonify({"id": merchant.id, "name": merchant.name})
