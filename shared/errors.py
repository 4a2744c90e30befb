"""Errors: the domain's, and their JSON form ``{"error": {"code", "message", "fields"}}``.

Domain modules raise ``DomainError`` subclasses (not found, out of stock, conflict, ...): they
say what went wrong in the domain's words and know nothing of HTTP. ``HTTP_STATUS`` below is
the one place that maps them to a status code. ``ApiError`` carries a status of its own and
is for the HTTP layer (auth, request parsing, idempotency keys).
"""
from __future__ import annotations

import logging

from marshmallow import Schema, ValidationError

log = logging.getLogger("linkshop.errors")


class DomainError(Exception):
    """A rule refused the request. ``code``: a stable machine-readable word (each subclass
    has a default); ``fields``: which input field was wrong, and why."""

    code = "refused"

    def __init__(self, message: str, fields: dict | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code is not None:
            self.code = code


class Invalid(DomainError):
    """The input breaks a rule (a quantity over the limit, an unknown reference)."""
    code = "invalid"


class NotFound(DomainError):
    code = "not_found"


class Forbidden(DomainError):
    code = "forbidden"


class Conflict(DomainError):
    """The thing is not in a state that allows this (already refunded, not delivered...)."""
    code = "conflict"


class OutOfStock(Conflict):
    code = "out_of_stock"


class Unavailable(DomainError):
    """Try again shortly (contention, a dependency not ready)."""
    code = "busy"


# The one mapping from the domain's errors to HTTP; the most specific class wins.
HTTP_STATUS: dict[type, int] = {Invalid: 422, NotFound: 404, Forbidden: 403, Conflict: 409, Unavailable: 503}


def http_status(error: DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}

    @classmethod
    def of(cls, error: DomainError) -> "ApiError":
        """A domain error in HTTP terms."""
        return cls(http_status(error), error.code, error.message, error.fields)

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "fields": self.fields}}


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_response(status: int, code: str, message: str, fields: dict | None = None):
    from flask import jsonify
    response = jsonify(ApiError(status, code, message, fields).body())
    response.status_code = status
    return response


def load_json(schema: Schema, *, partial: bool = False) -> dict:
    """Parse and validate the request body; unknown fields are refused (422)."""
    from flask import request
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    try:
        return schema.load(data, partial=partial)
    except ValidationError as exc:
        raise ApiError(422, "invalid", "the request has invalid fields", exc.messages) from None


def load_args(schema: Schema) -> dict:
    from flask import request
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(422, "invalid", "the query has invalid parameters", exc.messages) from None


def register_error_handlers(app) -> None:
    from flask import request
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        return error_response(http_status(exc), exc.code, exc.message, exc.fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405 (RFC 9110 requires it)
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The body is never logged: it may carry card secrets.
        log.exception("unhandled error on %s %s", request.method, request.url_rule)
        return error_response(500, "internal", "internal error")
