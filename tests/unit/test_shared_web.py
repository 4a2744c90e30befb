"""shared.errors and shared.web: the JSON error shape for every failure, strict bodies and
queries, and the operational routes (healthz, readyz, metrics)."""
import pytest
from flask import Blueprint, jsonify
from marshmallow import Schema, fields
from sqlalchemy import MetaData

from shared.config import load_settings
from shared.db import Database
from shared.errors import ApiError, load_args, load_json
from shared.web import create_service_app, ctx
from tests.kit import assert_error, embedded_env


class ThingSchema(Schema):
    name = fields.Str(required=True)
    size = fields.Int(strict=True)


class QuerySchema(Schema):
    page = fields.Int(load_default=1)


class FakeBus:
    def __init__(self, ok):
        self.ok = ok
        self.pings = 0

    def ping(self):
        self.pings += 1
        return self.ok


def make_app(tmp_path, bus=None, db_url=None):
    settings = load_settings("risk", embedded_env(tmp_path))
    db = Database(db_url or f"sqlite:///{tmp_path / 'web.db'}", MetaData())
    app = create_service_app("risk", settings, db, bus=bus)
    bp = Blueprint("t", __name__)

    @bp.post("/risk/v1/things")
    def things():
        return jsonify(load_json(ThingSchema())), 201

    @bp.get("/risk/v1/things")
    def list_things():
        return jsonify(load_args(QuerySchema()))

    @bp.get("/risk/v1/conflict")
    def conflict():
        raise ApiError(409, "out_of_stock", "not enough keys", {"available": [0]})

    @bp.get("/risk/v1/boom")
    def boom():
        raise RuntimeError("card secret ABCD-1234 must never leak")

    @bp.get("/risk/v1/ctx")
    def context():
        return jsonify({"service": ctx().settings.service})

    app.register_blueprint(bp)
    return app


@pytest.fixture
def client(tmp_path):
    return make_app(tmp_path).test_client()


def test_unknown_route_is_a_json_404(client):
    assert_error(client.get("/risk/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/"), 404, "not_found")


def test_wrong_method_is_a_json_405(client):
    assert_error(client.delete("/risk/v1/things"), 405, "method_not_allowed")
    response = client.put("/risk/healthz")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]  # a 405 names the methods that would work
    assert response.content_type == "application/json"


@pytest.mark.parametrize("kwargs", [
    {"data": "{not json", "content_type": "application/json"},
    {"data": "", "content_type": "application/json"},
    {"data": "null", "content_type": "application/json"},
    {"json": [{"name": "x"}]},
    {"json": "name"},
    {"data": "name=x", "content_type": "application/x-www-form-urlencoded"},
])
def test_a_body_that_is_not_a_json_object_is_400(client, kwargs):
    assert_error(client.post("/risk/v1/things", **kwargs), 400, "bad_json")


def test_unknown_fields_are_rejected_with_422(client):
    error = assert_error(client.post("/risk/v1/things", json={"name": "x", "colour": "red"}), 422, "invalid")
    assert "colour" in error["fields"]


def test_invalid_and_missing_fields_are_422_with_field_messages(client):
    error = assert_error(client.post("/risk/v1/things", json={"size": "3"}), 422, "invalid")
    assert set(error["fields"]) == {"name", "size"}
    response = client.post("/risk/v1/things", json={"name": "x", "size": 3})
    assert response.status_code == 201 and response.get_json() == {"name": "x", "size": 3}


def test_query_parameters_are_validated(client):
    assert client.get("/risk/v1/things?page=2").get_json() == {"page": 2}
    assert_error(client.get("/risk/v1/things?page=two"), 422, "invalid")
    error = assert_error(client.get("/risk/v1/things?pgae=2"), 422, "invalid")
    assert "pgae" in error["fields"]


def test_api_errors_keep_status_code_and_fields(client):
    error = assert_error(client.get("/risk/v1/conflict"), 409, "out_of_stock")
    assert error == {"code": "out_of_stock", "message": "not enough keys", "fields": {"available": [0]}}


def test_unexpected_errors_are_a_json_500_that_leaks_nothing(client):
    response = client.get("/risk/v1/boom")
    assert_error(response, 500, "internal")
    assert "ABCD-1234" not in response.get_data(as_text=True)


def test_service_context_is_available_to_routes(client):
    assert client.get("/risk/v1/ctx").get_json() == {"service": "risk"}


def test_healthz(client):
    response = client.get("/risk/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "risk"}


def test_readyz_checks_database_and_bus(tmp_path):
    ok = make_app(tmp_path, bus=FakeBus(True)).test_client().get("/risk/readyz")
    assert ok.status_code == 200
    assert ok.get_json() == {"status": "ready", "checks": {"database": True, "bus": True}}

    bus = FakeBus(False)
    client = make_app(tmp_path, bus=bus).test_client()
    down = client.get("/risk/readyz")
    assert down.status_code == 503
    assert down.get_json()["checks"] == {"database": True, "bus": False}
    client.get("/risk/readyz")
    assert bus.pings == 1  # probes come often: the broker is asked at most every few seconds

    no_db = make_app(tmp_path, bus=FakeBus(True),
                     db_url=f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}").test_client()
    response = no_db.get("/risk/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] is False


def test_metrics_count_requests_by_route_template(client):
    client.get("/risk/healthz")
    client.get("/risk/v1/nothing-here")
    for path in ("/risk/metrics", "/metrics"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain")
        text = response.get_data(as_text=True)
        assert 'linkshop_http_requests_total{method="GET",route="/risk/healthz",service="risk",status="200"}' in text
        assert 'route="unmatched",service="risk",status="404"' in text
        assert "linkshop_http_request_duration_seconds_bucket" in text
        assert "/risk/v1/nothing-here" not in text  # raw paths never become labels
