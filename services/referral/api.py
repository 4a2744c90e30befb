from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from shared.auth import bearer_token, is_admin, issue_user_token, require_admin, verify_user_token
from shared.errors import ApiError, load_args, load_json, not_found
from shared.events import utcnow
from shared.openapi import documented
from shared.pagination import page_rows, paginate
from shared.web import ctx

from . import binding, domain
from .models import Attribution, CommissionLine, User
from .schemas import (BindingRuleSchema, BindSchema, DecisionSchema, ExplainQuerySchema, PageSchema,
                      RegisterSchema, TeamQuerySchema)

bp = Blueprint("referral", __name__, url_prefix="/referral/v1")


def _caller_may_see(user_id: str) -> None:
    """A distributor sees their own data; the operator sees anyone's."""
    c = ctx()
    if is_admin(c.settings.admin_token):
        return
    token = bearer_token()
    if not token:
        raise ApiError(401, "unauthorized", "a user token is required")
    caller = verify_user_token(c.settings.token_secret, token)
    if caller is None:
        raise ApiError(401, "unauthorized", "the user token is invalid or expired")
    if caller != user_id:
        raise ApiError(403, "forbidden", "you can only see your own data")


def _user_view(session, user: User) -> dict:
    """``locked_until`` is set only while a lock period runs: a permanent binding has no end
    (``binding_mode`` says which)."""
    mode, until = binding.lock_of(session, user)
    return {"user_id": user.id, "invite_code": user.invite_code, "parent_id": user.parent_id,
            "level_in_network": user.depth, "bound_at": user.bound_at.isoformat() if user.bound_at else None,
            "bound_merchant_id": user.bound_merchant_id, "binding_mode": mode,
            "locked_until": until.isoformat() if until and until > utcnow() else None,
            "created_at": user.created_at.isoformat()}


@bp.post("/users")
@documented(body=RegisterSchema)
def register():
    c = ctx()
    data = load_json(RegisterSchema())
    client = {"ip": request.remote_addr, "device_id": data["device_id"]}
    with c.db.write() as s:
        user = binding.register(s, data["email"], data["invite_code"], client, utcnow(), data["merchant_id"])
        body = {**_user_view(s, user), "token": issue_user_token(c.settings.token_secret, user.id)}
    return jsonify(body), 201


@bp.get("/users/<user_id>")
def get_user(user_id):
    _caller_may_see(user_id)
    with ctx().db.read() as s:
        user = s.get(User, user_id)
        if user is None:
            raise not_found("user")
        return jsonify(_user_view(s, user))


@bp.post("/users/<user_id>/bind")
@documented(body=BindSchema)
def bind(user_id):
    _caller_may_see(user_id)
    data = load_json(BindSchema())
    with ctx().db.write() as s:
        user = s.get(User, user_id, with_for_update=True)
        if user is None:
            raise not_found("user")
        binding.bind(s, user, data["invite_code"], utcnow(), data["merchant_id"])
        return jsonify(_user_view(s, user))


@bp.put("/settings/binding")
@documented(body=BindingRuleSchema)
def set_binding():
    """The operator's default rule, for bindings made outside any merchant's shop (a shop's own
    rule is the merchant's, set in catalog)."""
    c = ctx()
    require_admin(c.settings.admin_token)
    data = load_json(BindingRuleSchema())
    with c.db.write() as s:
        binding.set_binding_rule(s, data["mode"], data["lock_days"])
    return jsonify(data)


@bp.get("/settings/binding")
def get_binding():
    with ctx().db.read() as s:
        return jsonify(binding.binding_rule(s))


@bp.get("/users/<user_id>/team")
@documented(query=TeamQuerySchema)
def team(user_id):
    _caller_may_see(user_id)
    args = load_args(TeamQuerySchema())
    with ctx().db.read() as s:
        user = s.get(User, user_id)
        if user is None:
            raise not_found("user")
        body = domain.team_summary(s, user, utcnow(), args["days"])
        parent = user
        if args["parent"]:  # drill down the tree, but only inside one's own team
            parent = s.get(User, args["parent"])
            if parent is None or (parent.id != user.id and user.id not in binding.ancestors(parent)):
                raise not_found("team member")
        body["tree"] = domain.team_page(s, parent, args["page"], args["per_page"])
        return jsonify(body)


def _line_view(line: CommissionLine) -> dict:
    return {"id": line.id, "order_no": line.order_no, "level": line.level, "rate_bps": line.rate_bps,
            "amount_cents": line.amount_cents, "reversed_cents": line.reversed_cents, "status": line.status,
            "reason": line.flag_reason, "created_at": line.created_at.isoformat()}


@bp.get("/users/<user_id>/commissions")
@documented(query=PageSchema)
def commissions(user_id):
    _caller_may_see(user_id)
    args = load_args(PageSchema())
    with ctx().db.read() as s:
        query = select(CommissionLine).where(CommissionLine.user_id == user_id).order_by(CommissionLine.id.desc())
        return jsonify(paginate(s, query, args, _line_view))


@bp.get("/orders/<order_no>/explain")
@documented(query=ExplainQuerySchema)
def explain(order_no):
    user_id = load_args(ExplainQuerySchema())["user_id"]
    _caller_may_see(user_id)
    with ctx().db.read() as s:
        return jsonify(domain.explain(s, order_no, user_id))


@bp.get("/commissions/held")
@documented(query=PageSchema)
def held_lines():
    c = ctx()
    require_admin(c.settings.admin_token)
    args = load_args(PageSchema())
    with c.db.read() as s:
        query = select(CommissionLine).where(CommissionLine.status == "held").order_by(CommissionLine.id)
        return jsonify({"items": [{**_line_view(r), "user_id": r.user_id} for r in page_rows(s, query, args)]})


@bp.post("/commissions/<int:line_id>/<decision>")
@documented(body=DecisionSchema)
def decide(line_id, decision):
    """The operator's answer to a held line: approve → it goes on; reject → reversed."""
    c = ctx()
    require_admin(c.settings.admin_token)
    if decision not in ("approve", "reject"):
        raise not_found("decision")
    data = load_json(DecisionSchema())
    with c.db.write() as s:
        line = s.get(CommissionLine, line_id, with_for_update=True)
        if line is None:
            raise not_found("commission line")
        if decision == "approve":
            if line.status != "held":
                raise ApiError(409, "not_held", f"the line is {line.status}, not held")
            settled = s.get(Attribution, line.order_no).settled
            line.status, line.flag_reason = ("released" if settled else "accrued"), None
        else:
            domain.reject(s, line, data["reason"])
        return jsonify(_line_view(line))
