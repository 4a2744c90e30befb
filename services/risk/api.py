"""The operator's routes: decisions and the review queue, rules, the blocklist. Admin only."""
from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from shared.auth import require_admin
from shared.errors import load_args, load_json, not_found
from shared.events import utcnow
from shared.pagination import paginate
from shared.web import ctx

from . import domain
from .models import BlockEntry, Decision, RuleSetting
from .rules import SPECS, Rule, RuleBook, update_setting
from .schemas import (BlockQuerySchema, BlockSchema, DecisionQuerySchema, OperatorDecisionSchema,
                      RuleUpdateSchema)

bp = Blueprint("risk", __name__, url_prefix="/risk/v1")


@bp.before_request
def _operator_only():
    require_admin(ctx().settings.admin_token)


def _decision_view(d: Decision) -> dict:
    return {"id": d.id, "kind": d.kind, "order_no": d.order_no, "user_id": d.user_id,
            "withdrawal_id": d.withdrawal_id, "decision": d.decision, "rules_decision": d.rules_decision,
            "status": "open" if d.decision == "review" else "final", "score": d.score, "reasons": d.reasons,
            "decided_by": d.decided_by, "note": d.note, "created_at": d.created_at.isoformat(),
            "decided_at": d.decided_at.isoformat()}


def _rule_view(rule: Rule, updated_at=None) -> dict:
    spec = rule.spec
    return {"name": rule.name, "stage": spec.stage, "description": spec.description, "enabled": rule.enabled,
            "score": rule.score, "hard": spec.hard, "params": rule.params,
            "defaults": {"enabled": True, "score": spec.score, "params": spec.params},
            "updated_at": updated_at.isoformat() if updated_at else None}


def _get_or_404(session, model, key, what: str, **kw):
    row = session.get(model, key, **kw)
    if row is None:
        raise not_found(what)
    return row


@bp.get("/decisions")
def decisions():
    """``?order_no=`` (the order's decision and its commission flags), ``?status=review``
    (the review queue, oldest first), ``?withdrawal_id=``, ``?user_id=``, ``?kind=``."""
    args = load_args(DecisionQuerySchema())
    query = select(Decision)
    for name in ("order_no", "withdrawal_id", "user_id", "kind"):
        if args[name]:
            query = query.where(getattr(Decision, name) == args[name])
    if args["status"]:
        query = query.where(Decision.decision == args["status"])
    query = query.order_by(Decision.created_at, Decision.id)
    with ctx().db.read() as s:
        return jsonify(paginate(s, query, args, _decision_view))


@bp.get("/decisions/<int:decision_id>")
def decision(decision_id):
    with ctx().db.read() as s:
        return jsonify(_decision_view(_get_or_404(s, Decision, decision_id, "decision")))


@bp.post("/decisions/<int:decision_id>/<verdict>")
def decide(decision_id, verdict):
    if verdict not in ("approve", "reject"):
        raise not_found("action")
    data = load_json(OperatorDecisionSchema()) if request.get_data() else {"note": None}  # a body is optional
    with ctx().db.write() as s:
        row = _get_or_404(s, Decision, decision_id, "decision", with_for_update=True)
        domain.operator_decide(s, row, verdict, data["note"], utcnow())
        return jsonify(_decision_view(row))


def _rule_or_404(name: str):
    if name not in SPECS:
        raise not_found("rule")
    return SPECS[name]


@bp.get("/rules")
def rules():
    with ctx().db.read() as s:
        book = RuleBook(s)
        stamps = dict(s.execute(select(RuleSetting.name, RuleSetting.updated_at)).all())
        return jsonify({"items": [_rule_view(rule, stamps.get(name)) for name, rule in book.rules.items()]})


@bp.get("/rules/<name>")
def rule(name):
    _rule_or_404(name)
    with ctx().db.read() as s:
        row = s.get(RuleSetting, name)
        return jsonify(_rule_view(RuleBook(s).rules[name], row.updated_at if row else None))


@bp.put("/rules/<name>")
def update_rule(name):
    """Change a rule's switch, score or parameters (those not given keep their value)."""
    spec = _rule_or_404(name)
    data = load_json(RuleUpdateSchema())
    with ctx().db.write() as s:
        row = update_setting(s, spec, data, utcnow())
        return jsonify(_rule_view(RuleBook(s).rules[name], row.updated_at))


def _block_view(e: BlockEntry) -> dict:
    return {"id": e.id, "kind": e.kind, "value": e.value, "reason": e.reason, "created_at": e.created_at.isoformat()}


@bp.get("/blocklist")
def blocklist():
    args = load_args(BlockQuerySchema())
    query = select(BlockEntry).order_by(BlockEntry.id)
    if args["kind"]:
        query = query.where(BlockEntry.kind == args["kind"])
    with ctx().db.read() as s:
        return jsonify(paginate(s, query, args, _block_view))


@bp.post("/blocklist")
def add_block():
    data = load_json(BlockSchema())
    with ctx().db.write() as s:
        entry = domain.add_block(s, data["kind"], data["value"], data["reason"], utcnow())
        return jsonify(_block_view(entry)), 201


@bp.get("/blocklist/<int:entry_id>")
def block_entry(entry_id):
    with ctx().db.read() as s:
        return jsonify(_block_view(_get_or_404(s, BlockEntry, entry_id, "blocklist entry")))


@bp.delete("/blocklist/<int:entry_id>")
def remove_block(entry_id):
    with ctx().db.write() as s:
        s.delete(_get_or_404(s, BlockEntry, entry_id, "blocklist entry"))
    return "", 204
