"""Catalog rules, free of Flask."""
from __future__ import annotations

import secrets

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from shared.auth import hash_secret, new_api_key
from shared.db import DriverStatement
from shared.events import utcnow

from .models import Merchant, MerchantApiKey, Product, outbox


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def binding_of(merchant: Merchant) -> dict:
    return {"mode": merchant.binding_mode, "lock_days": merchant.binding_lock_days}


def merchant_payload(session: Session, merchant: Merchant) -> dict:
    hashes = session.scalars(select(MerchantApiKey.key_hash).where(
        MerchantApiKey.merchant_id == merchant.id, MerchantApiKey.revoked_at.is_(None))).all()
    return {"merchant_id": merchant.id, "name": merchant.name, "status": merchant.status,
            "fee_bps": merchant.fee_bps, "api_key_hashes": sorted(hashes), "binding": binding_of(merchant),
            "mail_keys": merchant.mail_keys is not False, "version": merchant.version}


def create_merchant(session: Session, name: str, email: str, fee_bps: int) -> tuple[Merchant, str]:
    now = utcnow()
    merchant = Merchant(id=new_id("mer"), name=name, email=email.lower(), fee_bps=fee_bps,
                        status="active", binding_mode="permanent", binding_lock_days=None, mail_keys=True, version=1,
                        created_at=now)
    api_key = new_api_key()
    session.add(merchant)
    session.add(MerchantApiKey(key_hash=hash_secret(api_key), merchant_id=merchant.id, created_at=now))
    session.flush()
    outbox.add(session, "catalog.merchant.upserted", merchant_payload(session, merchant), merchant.id)
    return merchant, api_key


def rotate_api_key(session: Session, merchant: Merchant) -> str:
    """Issue a new key and revoke the old ones, in one announced change."""
    now = utcnow()
    for key in session.scalars(select(MerchantApiKey).where(
            MerchantApiKey.merchant_id == merchant.id, MerchantApiKey.revoked_at.is_(None))):
        key.revoked_at = now
    api_key = new_api_key()
    session.add(MerchantApiKey(key_hash=hash_secret(api_key), merchant_id=merchant.id, created_at=now))
    merchant.version += 1
    session.flush()
    outbox.add(session, "catalog.merchant.upserted", merchant_payload(session, merchant), merchant.id)
    return api_key


def update_merchant(session: Session, merchant: Merchant, changes: dict) -> Merchant:
    """Referral applies the new binding rule to the bindings already made in this shop too
    (their locks measured from when each was made), so it is announced like any change;
    delivery learns ``mail_keys`` (link-only e-mail) the same way."""
    binding = changes.get("binding")
    new_binding = binding is not None and binding != binding_of(merchant)
    new_mail_keys = "mail_keys" in changes and changes["mail_keys"] != (merchant.mail_keys is not False)
    if not (new_binding or new_mail_keys):
        return merchant  # no new version: every version is an event each projection applies
    if new_binding:
        merchant.binding_mode, merchant.binding_lock_days = binding["mode"], binding["lock_days"]
    if new_mail_keys:
        merchant.mail_keys = changes["mail_keys"]
    merchant.version += 1
    session.flush()
    outbox.add(session, "catalog.merchant.upserted", merchant_payload(session, merchant), merchant.id)
    return merchant


def merchant_for_key(session: Session, api_key: str) -> Merchant | None:
    return session.scalar(select(Merchant).join(MerchantApiKey).where(
        MerchantApiKey.key_hash == hash_secret(api_key), MerchantApiKey.revoked_at.is_(None),
        Merchant.status == "active"))


def product_payload(product: Product) -> dict:
    return {
        "product_id": product.id, "merchant_id": product.merchant_id, "title": product.title,
        "price_cents": product.price_cents, "cost_cents": product.cost_cents,
        "currency": product.currency, "status": product.status,
        "max_per_order": product.max_per_order, "instructions": product.instructions,
        "commission": product.commission or {"levels_bps": [], "cap_bps": None},
        "version": product.version,
    }


def create_product(session: Session, merchant: Merchant, data: dict) -> Product:
    now = utcnow()
    product = Product(id=new_id("prd"), merchant_id=merchant.id, version=1, created_at=now,
                      updated_at=now, stock=0, stock_unlimited=False, stock_low=False,
                      sold_count=0, refunded_count=0, **data)
    session.add(product)
    session.flush()
    outbox.add(session, "catalog.product.upserted", product_payload(product), product.id)
    return product


def update_product(session: Session, product: Product, changes: dict) -> Product:
    price = changes.get("price_cents", product.price_cents)
    cost = changes.get("cost_cents", product.cost_cents)
    if cost > price:
        from shared.errors import Invalid
        raise Invalid("the request has invalid fields",
                       {"cost_cents": ["cost must not exceed the price"]}, code="invalid")
    for name, value in changes.items():
        setattr(product, name, value)
    product.version += 1
    product.updated_at = utcnow()
    session.flush()
    outbox.add(session, "catalog.product.upserted", product_payload(product), product.id)
    return product


def apply_stock(session: Session, payload: dict) -> None:
    """Stock counts may arrive out of order: only a newer reading replaces an older one."""
    product = session.get(Product, payload["product_id"], with_for_update=True)
    if product is None:
        return  # a product deleted here, or one we will learn of; stock syncs again anyway
    as_of = payload.get("as_of") or ""
    if product.stock_as_of and as_of <= product.stock_as_of:
        return
    product.stock = payload["available"]
    product.stock_unlimited = bool(payload.get("unlimited", False))
    product.stock_low = bool(payload.get("low", False))
    product.stock_as_of = as_of


_products = Product.__table__
_COUNT_SALE = DriverStatement(update(_products).where(_products.c.id == bindparam("product_id"))
                              .values(sold_count=_products.c.sold_count + bindparam("quantity")))
_COUNT_REFUND = DriverStatement(update(_products).where(_products.c.id == bindparam("product_id"))
                                .values(refunded_count=_products.c.refunded_count + bindparam("quantity")))


def count_sale(session: Session, payload: dict, refunded: bool) -> None:
    product_id = payload.get("product_id")
    if not product_id:  # nothing to count against (session.get(None) warns, may one day raise)
        return
    if refunded and payload.get("delivered") is False:
        return  # an order refunded before delivery (rejected by risk, say) was never counted as sold
    # One atomic increment per event (no read, no row lock held across statements): every
    # delivery fans out here, so this is the catalog worker's hottest statement.
    (_COUNT_REFUND if refunded else _COUNT_SALE).execute(
        session, {"product_id": product_id, "quantity": payload["quantity"]})
