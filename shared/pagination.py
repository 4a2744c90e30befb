"""Page-numbered lists, the same on every service: ``?page=1&per_page=N`` in, and
``{"items": [...], "page", "per_page", "total"}`` out.

A service states its limits once, in its schemas module::

    PageSchema = page_schema(per_page=20, max_per_page=100)

    class WithdrawalListSchema(PageSchema):   # the list's own filters next to the page
        status = fields.Str(load_default=None)

and a route hands its select to ``paginate`` (or ``page_rows`` where the answer is the items
alone)::

    args = load_args(WithdrawalListSchema())
    return jsonify(paginate(session, select(Withdrawal).order_by(Withdrawal.id), args, withdrawal_view))

A query parameter out of range is refused by ``load_args`` (422 ``invalid``, its field named).
"""
from __future__ import annotations

from typing import Any, Callable

from marshmallow import Schema, fields, validate
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


class PageArgs(Schema):
    """``page`` (from 1) and ``per_page``; ``page_schema`` makes one with a service's limits."""

    page = fields.Int(load_default=1, validate=validate.Range(min=1))
    per_page = fields.Int(load_default=50, validate=validate.Range(min=1, max=200))


def page_schema(per_page: int = 50, max_per_page: int = 200, max_page: int | None = None,
                name: str = "PageSchema") -> type[PageArgs]:
    """A ``PageArgs`` whose ``per_page`` defaults to ``per_page`` and may not pass
    ``max_per_page``; ``max_page`` caps ``page`` (none by default)."""
    if not 1 <= per_page <= max_per_page:
        raise ValueError(f"the default per_page {per_page} is outside 1..{max_per_page}")
    attrs = {
        "page": fields.Int(load_default=1, validate=validate.Range(min=1, max=max_page)),
        "per_page": fields.Int(load_default=per_page, validate=validate.Range(min=1, max=max_per_page)),
        "__module__": __name__,
    }
    return type(name, (PageArgs,), attrs)


def offset(args: dict) -> int:
    return (args["page"] - 1) * args["per_page"]


def count(session: Session, query: Select) -> int:
    """How many rows ``query`` selects in all (its ordering, which cannot change that, dropped)."""
    return session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))


def page_rows(session: Session, query: Select, args: dict) -> list:
    """The rows of the requested page; ``query`` brings its own (stable) order."""
    return list(session.scalars(query.offset(offset(args)).limit(args["per_page"])).all())


def paginate(session: Session, query: Select, args: dict, view: Callable[[Any], dict]) -> dict:
    """The page as every list answers it: its items (``view`` of each row), the page asked
    for, its size and how many rows there are in all."""
    return {"items": [view(row) for row in page_rows(session, query, args)], "page": args["page"],
            "per_page": args["per_page"], "total": count(session, query)}
