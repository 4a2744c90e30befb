"""The domain's errors and their one mapping to HTTP (shared/errors.py)."""
import pytest
from flask import Flask

from shared.errors import (ApiError, Conflict, DomainError, Forbidden, Invalid, NotFound, OutOfStock, Unavailable,
                           register_error_handlers)


@pytest.mark.parametrize("error, status, code", [
    (Invalid("no such product on sale", {"product_id": ["unknown product"]}, code="unknown_product"),
     422, "unknown_product"),
    (Invalid("at most 5 per order"), 422, "invalid"),
    (NotFound("order not found"), 404, "not_found"),
    (Forbidden("not your order"), 403, "forbidden"),
    (Conflict("the line is paid, not held", code="not_held"), 409, "not_held"),
    (OutOfStock("not enough keys in stock for this order"), 409, "out_of_stock"),
    (Unavailable("the product changed while ordering; try again"), 503, "busy"),
    (DomainError("a rule said no"), 400, "refused"),
])
def test_each_domain_error_answers_its_status_and_the_documented_body(error, status, code):
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/")
    def raises():
        raise error

    response = app.test_client().get("/")
    assert response.status_code == status
    assert response.get_json() == {"error": {"code": code, "message": error.message, "fields": error.fields}}


def test_the_http_layers_own_error_keeps_its_status():
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/")
    def raises():
        raise ApiError(401, "unauthorized", "a bearer token is required")

    response = app.test_client().get("/")
    assert (response.status_code, response.get_json()["error"]["code"]) == (401, "unauthorized")
