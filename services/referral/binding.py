"""The referral graph: registration, binding and rebinding (design §6), free of Flask.

A binding belongs to the shop whose invite link made it (``User.bound_merchant_id``) and
follows that merchant's rule; one made outside any shop follows the operator's default.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, literal, select, text, update
from sqlalchemy.orm import Session

from shared.db import is_postgres
from shared.errors import Conflict, Invalid
from shared.identity import email_hash, normalise_email

from .models import Merchant, Setting, User, outbox

INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are read aloud


def new_invite_code() -> str:
    return "".join(secrets.choice(INVITE_ALPHABET) for _ in range(8))


def ancestors(user: User) -> list[str]:
    """The upline, nearest first, read from the user's own row: O(levels), no graph walk."""
    return [uid for uid in reversed(user.path.strip("/").split("/")) if uid]


def user_by_code(session: Session, code: str) -> User | None:
    return session.scalar(select(User).where(User.invite_code == code.strip().upper()))


# -- rules -----------------------------------------------------------------------------------

def binding_rule(session: Session) -> dict:
    """The operator's default, for bindings made without a merchant's invite link."""
    rows = dict(session.execute(select(Setting.name, Setting.value)).all())
    return {"mode": rows.get("binding_mode", "permanent"), "lock_days": int(rows.get("binding_lock_days", 0))}


def set_binding_rule(session: Session, mode: str, lock_days: int) -> None:
    for name, value in (("binding_mode", mode), ("binding_lock_days", str(lock_days))):
        row = session.get(Setting, name)
        if row is None:
            session.add(Setting(name=name, value=value))
        else:
            row.value = value


def rule_for(session: Session, merchant_id: str | None) -> dict:
    """The rule a binding made in ``merchant_id``'s shop follows. It is read when a rebind is
    asked for, not frozen at binding time: a merchant who changes its rule changes it for the
    bindings already made in its shop too, each lock still measured from that binding's
    ``bound_at``."""
    if merchant_id is None:
        return binding_rule(session)
    merchant = session.get(Merchant, merchant_id)
    if merchant is None or merchant.binding_mode != "lock" or not merchant.binding_lock_days:
        return {"mode": "permanent", "lock_days": 0}  # when in doubt, keep the inviter's claim
    return {"mode": "lock", "lock_days": merchant.binding_lock_days}


def lock_of(session: Session, user: User) -> tuple[str | None, datetime | None]:
    """(mode, end of the lock) of the user's current binding: (None, None) when unbound, and
    no end when permanent."""
    if user.parent_id is None:
        return None, None
    rule = rule_for(session, user.bound_merchant_id)
    if rule["mode"] != "lock":
        return "permanent", None
    return "lock", user.bound_at + timedelta(days=rule["lock_days"])


def _known_merchant(session: Session, merchant_id: str | None) -> str | None:
    if merchant_id is not None and session.get(Merchant, merchant_id) is None:
        raise Invalid("no merchant has this id",
                       {"merchant_id": ["unknown merchant"]}, code="unknown_merchant")
    return merchant_id


# -- registration and binding ----------------------------------------------------------------

def register(session: Session, email: str, invite_code: str | None, client: dict, now: datetime,
             merchant_id: str | None = None) -> User:
    normalised = normalise_email(email)
    if session.scalar(select(User.id).where(User.email == normalised)):
        raise Conflict("this email is already registered", code="already_registered")
    merchant_id = _known_merchant(session, merchant_id)
    parent = None
    if invite_code:
        parent = user_by_code(session, invite_code)
        if parent is None:
            raise Invalid("no user has this invite code",
                           {"invite_code": ["unknown invite code"]}, code="unknown_invite_code")
    user = User(id=f"usr_{secrets.token_hex(8)}", email=normalised, email_hash=email_hash(normalised),
                invite_code=new_invite_code(), parent_id=parent.id if parent else None,
                path=f"{parent.path}{parent.id}/" if parent else "/", depth=parent.depth + 1 if parent else 0,
                bound_at=now if parent else None, bound_merchant_id=merchant_id if parent else None,
                client_ip=client.get("ip"), device_id=client.get("device_id"), created_at=now)
    session.add(user)
    session.flush()
    outbox.add(session, "referral.user.registered", {
        "user_id": user.id, "parent_id": user.parent_id, "ancestors": ancestors(user),
        "merchant_id": user.bound_merchant_id,
        "email_hash": user.email_hash, "client": {"ip": user.client_ip, "device_id": user.device_id},
        "registered_at": now.isoformat()}, user.id)
    return user


def bind(session: Session, user: User, invite_code: str, now: datetime, merchant_id: str | None = None) -> User:
    """Bind (or, once the current binding's lock is over, rebind) a user under an invite
    code's owner; the new binding belongs to ``merchant_id``'s shop."""
    if is_postgres(session):  # rebinds are rare; one at a time rules out two moves making a cycle
        session.execute(text("SELECT pg_advisory_xact_lock(731001)"))
    parent = user_by_code(session, invite_code)
    if parent is None:
        raise Invalid("no user has this invite code", {"invite_code": ["unknown"]}, code="unknown_invite_code")
    merchant_id = _known_merchant(session, merchant_id)
    if parent.id == user.id:
        raise Invalid("a user cannot invite themselves", {"invite_code": ["your own code"]}, code="self_invite")
    if parent.id == user.parent_id:
        return user  # following the same inviter again neither moves the shop nor restarts the lock
    if user.parent_id is not None:
        _, until = lock_of(session, user)
        if until is None:
            raise Conflict("this user is bound to their inviter permanently", code="binding_locked")
        if now < until:
            raise Conflict(f"this user is bound to their inviter until {until.isoformat(timespec='seconds')}", code="binding_locked")
    if user.id in ancestors(parent):  # the whole chain, not one hop
        raise Invalid("the inviter is in this user's own team",
                       {"invite_code": ["would create a cycle"]}, code="would_create_cycle")
    old_prefix = f"{user.path}{user.id}/"
    new_path = f"{parent.path}{parent.id}/"
    new_prefix = f"{new_path}{user.id}/"
    shift = parent.depth + 1 - user.depth
    session.execute(update(User).where(User.path.startswith(old_prefix, autoescape=True)).values(
        path=literal(new_prefix) + func.substr(User.path, len(old_prefix) + 1), depth=User.depth + shift),
        execution_options={"synchronize_session": False})
    user.parent_id, user.path, user.depth, user.bound_at = parent.id, new_path, parent.depth + 1, now
    user.bound_merchant_id = merchant_id
    session.flush()
    outbox.add(session, "referral.user.bound", {
        "user_id": user.id, "parent_id": parent.id, "ancestors": ancestors(user), "merchant_id": merchant_id,
        "bound_at": now.isoformat()}, user.id)
    return user
