"""JSON errors: ``{"error": {"code", "message", "fields"}}`` for every 4xx and 5xx.

``ApiError`` is plain Python, so domain rules raise it without knowing about Flask; only the
functions below that turn it into a response touch Flask.
"""
from __future__ import annotations

import logging

from marshmallow import Schema, ValidationError

log = logging.getLogger("linkshop.errors")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_response(status: int, code: str, message: str, fields: dict | None = None):
    from flask import jsonify
    response = jsonify({"error": {"code": code, "message": message, "fields": fields or {}}})
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
