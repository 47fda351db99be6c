"""docs/openapi.yaml: a valid OpenAPI 3.1 document that describes exactly the routes the app serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from flask import Flask
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# Operations the description may name before the app serves them (none now: `GET /leads`,
# described ahead of its branch, has landed). Keep this empty unless a route is in flight.
NOT_YET_SERVED: set[tuple[str, str]] = set()


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return spec


def _openapi_path(rule: str) -> str:
    # Flask's `<converter:name>` is OpenAPI's `{name}`.
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def mounted_prefixes(spec: dict[str, Any]) -> set[str]:
    """Paths marked `x-pruner-mounted`: a third-party UI whose own routes all live under them."""
    return {
        path
        for path, item in spec["paths"].items()
        for op in item.values()
        if isinstance(op, dict) and op.get("x-pruner-mounted")
    }


def served_operations(app: Flask, prefixes: set[str]) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _openapi_path(rule.rule)
        if any(path.startswith(p) and path != p for p in prefixes):
            continue  # described once, by its mount point
        for method in (rule.methods or set()) - IGNORED_METHODS:
            ops.add((method, path))
    return ops


def described_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch"}
    return {(m.upper(), path) for path, item in spec["paths"].items() for m in item if m in methods}


def test_the_description_is_valid_openapi_3_1() -> None:
    spec = load_spec()
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises on any violation of the 3.1 schema or a dangling $ref


def test_the_validator_refuses_a_broken_description() -> None:
    # The check above can fail: a response without its required description is refused.
    spec = load_spec()
    del spec["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    try:
        validate(spec)
    except OpenAPIValidationError:
        return
    raise AssertionError("openapi-spec-validator accepted a response without a description")


def test_every_route_the_app_serves_is_described_and_vice_versa(app: Flask) -> None:
    spec = load_spec()
    served = served_operations(app, mounted_prefixes(spec))
    described = described_operations(spec)
    assert served - described == set(), "routes the app serves that docs/openapi.yaml does not describe"
    assert described - served - NOT_YET_SERVED == set(), "operations described that the app does not serve"


def test_every_error_response_is_the_documented_shape() -> None:
    spec = load_spec()
    error_ref = "#/components/schemas/Error"
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if not status.startswith(("4", "5")) or path == "/webhooks/salesforce":
                    continue
                if "$ref" in response:
                    response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
                content = response.get("content", {})
                if set(content) == {"text/html"}:
                    continue  # a form route answering a browser with a page (the login form again)
                json_body = content.get("application/json")
                where = f"{method.upper()} {path} {status}"
                assert json_body is not None, f"{where} has no JSON error body"
                assert json_body["schema"] == {"$ref": error_ref}, f"{where} is not the {{error, detail}} shape"
