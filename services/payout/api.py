from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shared import idempotency as idem
from shared.auth import bearer_token, is_admin, require_admin, verify_user_token
from shared.errors import ApiError, load_args, load_json, not_found
from shared.events import utcnow
from shared.openapi import documented
from shared.pagination import paginate
from shared.web import ctx

from . import domain, exports, ledger
from .models import PayoutOrder, Withdrawal, idempotency
from .schemas import (OWNER, DecisionSchema, FailedSchema, PageSchema, PaidSchema, WithdrawalListSchema,
                      WithdrawalSchema)

bp = Blueprint("payout", __name__, url_prefix="/payout/v1")
OWNER_RE = re.compile(OWNER)


def _caller(session) -> str | None:
    """None for the operator, else the owner the token speaks for (``user:<id>``,
    ``merchant:<id>``); 401 without a token or with one nobody issued."""
    c = ctx()
    token = bearer_token()
    if not token:
        raise ApiError(401, "unauthorized", "a bearer token is required")
    if is_admin(c.settings.admin_token, token):
        return None
    merchant_id = domain.merchant_for_token(session, token)
    if merchant_id is not None:
        return domain.merchant_owner(merchant_id)
    user_id = verify_user_token(c.settings.token_secret, token)
    if user_id is not None:
        return domain.user_owner(user_id)
    raise ApiError(401, "unauthorized", "the token is invalid, expired or revoked")


def _config():
    return ctx().extra["config"]


@bp.get("/accounts/<owner>")
@documented(query=PageSchema, summary="Balances (pending, available, debt) and the statement of an owner")
def get_account(owner):
    if not OWNER_RE.match(owner):
        raise not_found("account")
    args = load_args(PageSchema())
    with ctx().db.read() as s:
        caller = _caller(s)
        if caller is not None and caller != owner:
            raise ApiError(403, "forbidden", "you can only see your own account")
        return jsonify(domain.account_view(s, owner, args["page"], args["per_page"]))


@bp.get("/orders/<order_no>/split")
@documented(summary="Every posting of one order: fee, merchant, commission lines, refunds, releases")
def get_split(order_no):
    with ctx().db.read() as s:
        caller = _caller(s)
        order = s.get(PayoutOrder, order_no)
        if order is None or (caller is not None and caller != domain.merchant_owner(order.merchant_id)):
            raise not_found("order")
        return jsonify(domain.split_view(s, order))


@bp.get("/ledger/verify")
@documented(summary="Recompute the hash chain, every entry's sum and the cached balances (admin)")
def verify():
    c = ctx()
    require_admin(c.settings.admin_token)
    with c.db.read() as s:
        return jsonify(ledger.verify(s))


@bp.post("/withdrawals")
@documented(body=WithdrawalSchema, summary="Request a withdrawal (Idempotency-Key required)",
            responses={201: "requested"})
def create_withdrawal():
    c = ctx()
    cfg = _config()
    with c.db.read() as s:
        owner = _caller(s)
    if owner is None:
        raise ApiError(403, "forbidden", "withdrawals are made with a user token or a merchant key")
    key = idem.request_key()
    if key is None:
        raise ApiError(400, "idempotency_key_required", "an Idempotency-Key header is required")
    data = load_json(WithdrawalSchema())
    scope, digest = f"withdrawal:{owner}", idem.body_hash(data)
    dest_hash = domain.destination_hash(c.settings.token_secret, data["destination"])
    try:
        with c.db.write() as s:
            if stored := idem.replay(s, idempotency, scope, key, digest):
                return jsonify(stored[0]), stored[1]
            w = domain.request_withdrawal(s, cfg, owner, data["amount_cents"], data["destination"], dest_hash, utcnow(),
                                          payee_name=data.get("payee_name"))
            body = domain.withdrawal_view(w)
            idem.remember(s, idempotency, scope, key, digest, body, 201)
    except IntegrityError:  # the same key raced us and won: answer as it did
        with c.db.read() as s:
            stored = idem.replay(s, idempotency, scope, key, digest)
        if stored is None:
            raise
        return jsonify(stored[0]), stored[1]
    return jsonify(body), 201


@bp.get("/withdrawals")
@documented(query=WithdrawalListSchema, summary="Withdrawals: the operator's review queue, or one's own")
def list_withdrawals():
    args = load_args(WithdrawalListSchema())
    with ctx().db.read() as s:
        caller = _caller(s)
        owner = args["owner"]
        if caller is not None:
            if owner not in (None, caller):
                raise ApiError(403, "forbidden", "you can only list your own withdrawals")
            owner = caller
        query = select(Withdrawal)
        if owner:
            query = query.where(Withdrawal.owner == owner)
        if args["status"]:
            query = query.where(Withdrawal.status == args["status"])
        if args["method"]:
            query = query.where(Withdrawal.method == args["method"])
        if args["batch_id"]:
            query = query.where(Withdrawal.batch_id == args["batch_id"])
        return jsonify(paginate(s, query.order_by(Withdrawal.requested_at, Withdrawal.id), args,
                                domain.withdrawal_view))


@bp.get("/withdrawals/<withdrawal_id>")
@documented(summary="One withdrawal, to its owner or the operator")
def get_withdrawal(withdrawal_id):
    with ctx().db.read() as s:
        caller = _caller(s)
        w = s.get(Withdrawal, withdrawal_id)
        if w is None or (caller is not None and caller != w.owner):
            raise not_found("withdrawal")
        return jsonify(domain.withdrawal_view(w))


@bp.post("/withdrawals/<withdrawal_id>/<decision>")
@documented(body=DecisionSchema, summary="Approve or reject a waiting withdrawal (admin)")
def decide(withdrawal_id, decision):
    """The operator's answer to a withdrawal that waits (requested or in review); an approved
    one that is not paid yet can still be rejected."""
    c = ctx()
    require_admin(c.settings.admin_token)
    if decision not in ("approve", "reject"):
        raise not_found("decision")
    data = load_json(DecisionSchema()) if request.get_data() else {"reason": None}
    reasons = [data["reason"]] if data.get("reason") else []
    with c.db.write() as s:
        w = s.get(Withdrawal, withdrawal_id, with_for_update=True)
        if w is None:
            raise not_found("withdrawal")
        allowed = ("requested", "review") if decision == "approve" else ("requested", "review", "approved")
        if w.status not in allowed:
            raise ApiError(409, "not_pending", f"the withdrawal is {w.status}")
        if decision == "approve" and w.status == "requested" and _config().risk_required:
            # Nothing is paid that risk has not looked at (design §7): the operator overrides
            # risk's review with its reasons in front of them, never risk's silence.
            raise ApiError(409, "awaiting_risk", "risk has not assessed this withdrawal yet; approve it once it "
                                                 "is in review, or reject it now")
        if decision == "approve":
            domain.approve(s, w, "admin", utcnow(), reasons or ["approved by the operator"])
        else:
            domain.reject(s, w, "admin", utcnow(), reasons or ["rejected by the operator"])
        return jsonify(domain.withdrawal_view(w))


# -- paying out by an exported batch (LINKSHOP_PAYOUT_METHOD=export) ------------------------------

def _batch_file(batch_id: str, withdrawals) -> Response:
    return Response(exports.batch_csv(withdrawals), content_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="linkshop-withdrawals-{batch_id}.csv"',
                             "X-Batch-Id": batch_id, "X-Batch-Count": str(len(withdrawals)),
                             "Cache-Control": "no-store"})  # payees' accounts: kept by no cache


@bp.post("/withdrawals/export")
@documented(summary="Export every approved withdrawal as one batch file (admin): marks them sending",
            responses={200: "the batch, CSV in Alipay's batch transfer columns"})
def export_withdrawals():
    """A POST because it changes them: each approved withdrawal (up to 1000, the oldest first)
    is now ``sending`` in a new batch (``X-Batch-Id``), its money in flight, until the
    operator marks it paid or failed. ``GET /withdrawals/export/<batch>`` gives the same file again."""
    c = ctx()
    require_admin(c.settings.admin_token)
    with c.db.write() as s:
        batch_id, withdrawals = domain.export_batch(s, _config(), utcnow())
        response = _batch_file(batch_id, withdrawals)
    return response


@bp.get("/withdrawals/export/<batch_id>")
@documented(summary="An exported batch's file again, unchanged (admin)")
def get_batch(batch_id):
    c = ctx()
    require_admin(c.settings.admin_token)
    with c.db.read() as s:
        withdrawals = domain.batch_withdrawals(s, batch_id)
        if not withdrawals:
            raise not_found("batch")
        return _batch_file(batch_id, withdrawals)


def _settle(withdrawal_id: str, **word):
    c = ctx()
    with c.db.write() as s:
        w = s.get(Withdrawal, withdrawal_id, with_for_update=True)
        if w is None:
            raise not_found("withdrawal")
        domain.settle_exported(s, w, utcnow(), **word)
        return jsonify(domain.withdrawal_view(w))


@bp.post("/withdrawals/<withdrawal_id>/paid")
@documented(body=PaidSchema, summary="Mark an exported withdrawal paid, with its reference (admin)")
def mark_paid(withdrawal_id):
    """409 ``not_sending`` unless it is in an exported batch; the same reference again: 200,
    nothing posted twice; another reference: 409 ``already_paid``."""
    require_admin(ctx().settings.admin_token)
    data = load_json(PaidSchema())
    return _settle(withdrawal_id, external_ref=data["external_ref"])


@bp.post("/withdrawals/<withdrawal_id>/failed")
@documented(body=FailedSchema, summary="Mark an exported withdrawal failed: its money returns to the owner (admin)")
def mark_failed(withdrawal_id):
    require_admin(ctx().settings.admin_token)
    data = load_json(FailedSchema())
    return _settle(withdrawal_id, failure=data["reason"])
