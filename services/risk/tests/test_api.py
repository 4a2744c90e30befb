"""The operator's routes: decisions and the review queue, rules, the blocklist; every 4xx."""
import pytest

from tests.kit import assert_error

NOBODY = {}
WRONG = {"Authorization": "Bearer not-the-admin"}


@pytest.mark.parametrize("method,path", [
    ("get", "/risk/v1/decisions"), ("get", "/risk/v1/decisions/1"), ("post", "/risk/v1/decisions/1/approve"),
    ("get", "/risk/v1/rules"), ("get", "/risk/v1/rules/ring"), ("put", "/risk/v1/rules/ring"),
    ("get", "/risk/v1/blocklist"), ("post", "/risk/v1/blocklist"), ("get", "/risk/v1/blocklist/1"),
    ("delete", "/risk/v1/blocklist/1"),
])
def test_every_route_needs_the_admin_token(shop, method, path):
    assert_error(getattr(shop.risk, method)(path, json={}, headers=NOBODY), 401, "unauthorized")
    assert_error(getattr(shop.risk, method)(path, json={}, headers=WRONG), 403, "forbidden")


def test_decisions_by_order_and_the_review_queue(shop):
    shop.set_rule("velocity_device", params={"limit": 1})
    first = shop.created(0, device_id="d")
    held = shop.created(10, device_id="d", email="b@example.com")
    assert [d["order_no"] for d in shop.decisions(status="review")] == [held]
    d = shop.decision(held)
    assert d["status"] == "open" and d["reasons"][0]["rule"] == "velocity_device"
    r = shop.risk.get(f"/risk/v1/decisions/{d['id']}", headers=shop.admin)
    assert r.status_code == 200 and r.json == d
    r = shop.risk.post(f"/risk/v1/decisions/{d['id']}/approve", json={"note": "regular customer"}, headers=shop.admin)
    assert r.status_code == 200
    assert (r.json["decision"], r.json["rules_decision"], r.json["decided_by"], r.json["note"], r.json["status"]) == \
        ("approve", "review", "operator", "regular customer", "final")
    assert shop.decisions(status="review") == []
    answers = [p for p in shop.published("risk.order.assessed") if p["order_no"] == held]
    assert [a["decision"] for a in answers] == ["review", "approve"]
    assert answers[-1]["reasons"][-1] == "operator: approved by the operator: regular customer"
    # a final decision is not decided again
    assert_error(shop.risk.post(f"/risk/v1/decisions/{d['id']}/reject", headers=shop.admin), 409, "not_in_review")
    first_id = shop.decision(first)["id"]
    assert_error(shop.risk.post(f"/risk/v1/decisions/{first_id}/approve", headers=shop.admin), 409, "not_in_review")


def test_an_operator_rejects_a_review_without_a_body(shop):
    shop.set_rule("velocity_device", params={"limit": 1})
    shop.created(0, device_id="d")
    held = shop.created(10, device_id="d", email="b@example.com")
    r = shop.risk.post(f"/risk/v1/decisions/{shop.decision(held)['id']}/reject", headers=shop.admin)
    assert r.status_code == 200 and r.json["decision"] == "reject"
    assert shop.published("risk.order.assessed")[-1]["decision"] == "reject"


def test_decision_errors(shop):
    no = shop.created()
    did = shop.decision(no)["id"]
    assert_error(shop.risk.get("/risk/v1/decisions/999", headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.post("/risk/v1/decisions/999/approve", headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.post(f"/risk/v1/decisions/{did}/maybe", headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.post(f"/risk/v1/decisions/{did}/approve", data="nope",
                                headers={**shop.admin, "Content-Type": "application/json"}), 400, "bad_json")
    assert_error(shop.risk.post(f"/risk/v1/decisions/{did}/approve", json={"colour": "red"}, headers=shop.admin),
                 422, "invalid")
    for query in ("status=maybe", "kind=thing", "page=0", "per_page=500", "colour=red"):
        assert_error(shop.risk.get(f"/risk/v1/decisions?{query}", headers=shop.admin), 422, "invalid")
    page = shop.risk.get("/risk/v1/decisions?per_page=1&page=1", headers=shop.admin).json
    assert (page["total"], len(page["items"])) == (1, 1)


def test_rules_are_listed_and_edited(shop):
    r = shop.risk.get("/risk/v1/rules", headers=shop.admin)
    names = [rule["name"] for rule in r.json["items"]]
    assert {"decision", "blocklist", "velocity_ip", "velocity_device", "velocity_email", "velocity_payer",
            "card_testing", "product_burst", "burst_shared_ip", "disposable_email", "recent_unpaid",
            "first_order_amount", "max_quantity_fresh", "self_referral", "ring",
            "withdrawal_new_account", "withdrawal_fast", "withdrawal_tainted",
            "withdrawal_shared_destination"} == set(names)
    rule = shop.risk.get("/risk/v1/rules/velocity_ip", headers=shop.admin).json
    assert rule["params"] == rule["defaults"]["params"] and rule["updated_at"] is None
    changed = shop.set_rule("velocity_ip", params={"limit": 5}, score=70)
    assert changed["params"] == {**rule["params"], "limit": 5} and changed["score"] == 70 and changed["updated_at"]
    again = shop.set_rule("velocity_ip", enabled=False)  # what is not given keeps its value
    assert (again["enabled"], again["score"], again["params"]["limit"]) == (False, 70, 5)
    assert shop.risk.get("/risk/v1/rules/velocity_ip", headers=shop.admin).json == again


@pytest.mark.parametrize("body,field", [
    ({"params": {"limit": -1}}, "params"), ({"params": {"limit": "5"}}, "params"),
    ({"params": {"limit": 2.5}}, "params"), ({"params": {"nope": 1}}, "params"),
    ({"params": {"limit": True}}, "params"), ({"score": -5}, "score"), ({"score": "10"}, "score"),
    ({"enabled": "yes"}, "enabled"), ({"colour": "red"}, "colour"), ({"params": [1]}, "params"),
])
def test_rule_edits_that_are_refused(shop, body, field):
    error = assert_error(shop.risk.put("/risk/v1/rules/velocity_ip", json=body, headers=shop.admin), 422, "invalid")
    assert field in error["fields"]


def test_a_list_parameter_is_replaced_whole_and_checked(shop):
    rule = shop.risk.get("/risk/v1/rules/disposable_email", headers=shop.admin).json
    assert "mailinator.com" in rule["params"]["domains"]
    changed = shop.set_rule("disposable_email", params={"domains": ["Burner.Example"]})
    assert changed["params"]["domains"] == ["Burner.Example"]
    no = shop.created(email="x@mail.burner.example")
    assert shop.rules_of(no) == ["disposable_email"]  # a subdomain, any case
    assert shop.decision(no)["decision"] == "approve"  # a contributing signal only
    assert shop.rules_of(shop.created(email="x@mailinator.com", device_id="dev-2", ip="81.2.95.1")) == []
    for bad in ("burner.example", [""], [1], ["x" * 300], [["a"]], {"a": 1}):
        error = assert_error(shop.risk.put("/risk/v1/rules/disposable_email", json={"params": {"domains": bad}},
                                           headers=shop.admin), 422, "invalid")
        assert "domains" in error["fields"]["params"]


def test_rule_edit_errors(shop):
    assert_error(shop.risk.get("/risk/v1/rules/nope", headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.put("/risk/v1/rules/nope", json={}, headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.put("/risk/v1/rules/ring", data="x", headers={**shop.admin, "Content-Type": "application/json"}),
                 400, "bad_json")
    assert_error(shop.risk.put("/risk/v1/rules/decision", json={"params": {"review_at": 200}}, headers=shop.admin),
                 422, "invalid")
    assert_error(shop.risk.put("/risk/v1/rules/decision", json={"enabled": False}, headers=shop.admin), 422, "invalid")
    assert_error(shop.risk.put("/risk/v1/rules/card_testing", json={"params": {"unpaid_share": 1.5}},
                               headers=shop.admin), 422, "invalid")
    assert shop.set_rule("card_testing", params={"unpaid_share": 0.9})["params"]["unpaid_share"] == 0.9
    assert_error(shop.risk.post("/risk/v1/rules/ring", json={}, headers=shop.admin), 405)


def test_blocklist_crud(shop):
    entry = shop.block("email", " Some.One+shop@GoogleMail.com ", reason="fraud")
    assert (entry["kind"], entry["value"], entry["reason"]) == ("email", "someone@gmail.com", "fraud")
    cidr = shop.block("ip", "81.2.90.17/24")
    assert cidr["value"] == "81.2.90.0/24"
    assert shop.block("email_domain", "@Mailinator.COM")["value"] == "mailinator.com"
    assert shop.block("device", "dev-x")["value"] == "dev-x"
    listed = shop.risk.get("/risk/v1/blocklist", headers=shop.admin).json
    assert listed["total"] == 4 and [i["kind"] for i in listed["items"]] == ["email", "ip", "email_domain", "device"]
    only_ip = shop.risk.get("/risk/v1/blocklist?kind=ip", headers=shop.admin).json["items"]
    assert only_ip == [cidr]
    assert shop.risk.get(f"/risk/v1/blocklist/{cidr['id']}", headers=shop.admin).json == cidr
    # the same entry written another way is a duplicate
    assert_error(shop.risk.post("/risk/v1/blocklist", json={"kind": "email", "value": "someone@gmail.com"},
                                headers=shop.admin), 409, "already_blocked")
    assert_error(shop.risk.post("/risk/v1/blocklist", json={"kind": "ip", "value": "81.2.90.200/24"},
                                headers=shop.admin), 409, "already_blocked")
    assert shop.risk.delete(f"/risk/v1/blocklist/{cidr['id']}", headers=shop.admin).status_code == 204
    assert_error(shop.risk.delete(f"/risk/v1/blocklist/{cidr['id']}", headers=shop.admin), 404, "not_found")
    assert_error(shop.risk.get(f"/risk/v1/blocklist/{cidr['id']}", headers=shop.admin), 404, "not_found")
    no = shop.created(ip="81.2.90.5")
    assert shop.decision(no)["decision"] == "approve"  # removed, so no longer blocking


@pytest.mark.parametrize("body", [
    {"kind": "ip", "value": "300.1.1.1"}, {"kind": "ip", "value": "1.2.3.4/40"}, {"kind": "email", "value": "nobody"},
    {"kind": "email", "value": "a@"}, {"kind": "email_domain", "value": "localhost"}, {"kind": "email_domain", "value": "a@b.c"},
    {"kind": "device", "value": "   "}, {"kind": "phone", "value": "123"}, {"kind": "email"}, {"value": "x"},
    {"kind": "device", "value": "x", "colour": "red"}, {"kind": "device", "value": "x" * 300},
])
def test_blocklist_entries_that_are_refused(shop, body):
    assert_error(shop.risk.post("/risk/v1/blocklist", json=body, headers=shop.admin), 422, "invalid")


def test_blocklist_query_errors(shop):
    assert_error(shop.risk.get("/risk/v1/blocklist?kind=phone", headers=shop.admin), 422, "invalid")
    assert_error(shop.risk.post("/risk/v1/blocklist", data="[]", headers={**shop.admin, "Content-Type": "application/json"}),
                 400, "bad_json")
    assert_error(shop.risk.get("/risk/v1/blocklist/abc", headers=shop.admin), 404)


def test_the_domains_refusals_answer_as_before(shop):
    """Risk's domain raises domain errors; the kernel maps them to the same status, code,
    message and fields the routes answered with when they raised HTTP errors themselves."""
    def body(r, status):
        assert r.status_code == status, r.json
        return r.json["error"]
    shop.set_rule("velocity_device", params={"limit": 1})
    shop.created(0, device_id="d")
    held = shop.decision(shop.created(10, device_id="d", email="b@example.com"))
    shop.risk.post(f"/risk/v1/decisions/{held['id']}/approve", headers=shop.admin)
    assert body(shop.risk.post(f"/risk/v1/decisions/{held['id']}/reject", headers=shop.admin), 409) == {
        "code": "not_in_review", "message": "this decision is approve, not in review", "fields": {}}
    shop.block("ip", "81.2.90.0/24")
    assert body(shop.risk.post("/risk/v1/blocklist", json={"kind": "ip", "value": "81.2.90.7/24"},
                               headers=shop.admin), 409) == {
        "code": "already_blocked", "message": "ip 81.2.90.0/24 is already on the blocklist", "fields": {}}
    assert body(shop.risk.post("/risk/v1/blocklist", json={"kind": "ip", "value": "nope"}, headers=shop.admin), 422) \
        == {"code": "invalid", "message": "the request has invalid fields",
            "fields": {"value": ["not an IP address or CIDR network"]}}
    assert body(shop.risk.put("/risk/v1/rules/decision", json={"enabled": False}, headers=shop.admin), 422) == {
        "code": "invalid", "message": "the decision thresholds cannot be switched off",
        "fields": {"enabled": ["must stay true"]}}
    assert body(shop.risk.put("/risk/v1/rules/ring", json={"params": {"nope": 1}}, headers=shop.admin), 422) == {
        "code": "invalid", "message": "the request has invalid fields",
        "fields": {"params": {"nope": ["unknown parameter of ring"]}}}
