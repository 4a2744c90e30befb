import pytest
from openapi_spec_validator import validate

from services.embedded import build_embedded


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    return build_embedded({"LINKSHOP_VAR_DIR": str(tmp_path_factory.mktemp("oa"))}, migrate=False)


@pytest.mark.parametrize("service", ["catalog", "delivery", "referral", "payout", "risk"])
def test_each_service_prints_a_valid_openapi_document(system, service):
    r = system.apps[service].test_client().get(f"/{service}/openapi.json")
    assert r.status_code == 200
    validate(r.json)
    assert f"/{service}/healthz" in r.json["paths"]


def test_request_bodies_come_from_the_validating_schemas(system):
    doc = system.apps["delivery"].test_client().get("/delivery/openapi.json").json
    body = doc["paths"]["/delivery/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"product_id", "quantity", "email"}
