"""Each service prints its own OpenAPI document at ``/<svc>/openapi.json`` (design §3).

Routes declare what they take with ``@documented(body=..., query=...)``; apispec turns the
marshmallow schemas into JSON Schema, so the document cannot drift from the validation.
"""
from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message", "fields"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "fields": {"type": "object"}}}}}


def documented(body=None, query=None, summary: str | None = None, responses: dict | None = None):
    def mark(view):
        view.openapi = {"body": body, "query": query, "summary": summary, "responses": responses or {}}
        return view
    return mark


def build_spec(app, service: str) -> dict:
    spec = APISpec(title=f"Linkshop {service}", version="1", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()])
    spec.components.schema("Error", ERROR)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        meta = getattr(view, "openapi", {})
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        parameters = [{"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
                      for name in rule.arguments]
        operations = {}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = {"summary": meta.get("summary") or (view.__doc__ or rule.endpoint).strip().splitlines()[0],
                         "parameters": list(parameters),
                         "responses": {str(code): {"description": text}
                                       for code, text in (meta.get("responses") or {200: "OK"}).items()}}
            operation["responses"]["4XX"] = {"description": "refused",
                                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            if meta.get("query") is not None:
                operation["parameters"].append({"in": "query", "schema": meta["query"]})
            if meta.get("body") is not None and method in ("POST", "PUT", "PATCH"):
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": meta["body"]}}}
            operations[method.lower()] = operation
        if operations:
            spec.path(path=path, operations=operations)
    return spec.to_dict()
