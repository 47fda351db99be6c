"""Fuzz the running HTTP surface from docs/openapi.yaml with schemathesis.

Every operation the description names gets generated requests (valid and invalid bodies,
parameters and headers), signed the way its real caller signs them — Standard Webhooks on
`/webhooks/events`, HubSpot v3 on `/webhooks/hubspot`, the admin bearer token on admin
routes — so the fuzzer gets past authentication into the parsers. The app runs in-process
(WSGI) on fakeredis with a fixed clock. Whatever is sent, no answer may be a 500, carry a
traceback, or break the documented error shape; schemathesis also checks each answer
against the status codes, content types and schemas the description declares.

The example count is bounded (FUZZ_EXAMPLES per operation) so the test stays in seconds.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fakeredis
import schemathesis
import yaml
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.test import TestResponse

from tests.helpers import ADMIN_TOKEN, SECRET
from tests.webhooks.test_openapi import NOT_YET_SERVED, SPEC_PATH
from webhooks import create_app
from webhooks.hubspot_signatures import sign_v3
from webhooks.signatures import sign
from worker.config import Config
from worker.secrets import decode_secret

# Per operation; CI keeps it small and derandomized. PRUNER_FUZZ_EXAMPLES=500 digs deeper by hand.
FUZZ_EXAMPLES = int(os.environ.get("PRUNER_FUZZ_EXAMPLES", "40"))
NOW = 1_800_000_000.0  # fixed, so nothing here depends on the calendar
HUBSPOT_SECRET = "hubspot-client-secret"
SALESFORCE_ORG = "00D000000000001AAA"
SIGNED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature"}


def fuzz_description() -> dict[str, Any]:
    """docs/openapi.yaml without its security requirements.

    The test signs every request itself, over the exact bytes, as the real caller does; left
    in, schemathesis would also send requests with the signature or token removed or mangled,
    which the re-signing would then repair, and report the (re-signed) answers as "accepted
    without authentication". Signature refusals are tested in test_app.py and
    test_hubspot_inbound.py; here the fuzzer's budget goes on what lies behind them.
    """
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    spec.pop("security", None)
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict):
                op.pop("security", None)
    return spec


schema = schemathesis.openapi.from_dict(fuzz_description())
# rq-dashboard is a third-party UI mounted under /rq, and operations not served yet are not fuzzed.
schema = schema.exclude(path_regex="^/rq/")
for _method, _path in NOT_YET_SERVED:
    schema = schema.exclude(path_regex=f"^{_path}$", method=_method)


def make_app() -> Flask:
    config = Config.from_env(
        {
            "PRUNER_WEBHOOK_SECRET": SECRET,
            "PRUNER_ADMIN_TOKEN": ADMIN_TOKEN,
            "HUBSPOT_CLIENT_SECRET": HUBSPOT_SECRET,
            "SALESFORCE_ORG_ID": SALESFORCE_ORG,
            # Thousands of requests from one address: the limit is tested in test_ratelimit.py.
            "PRUNER_INBOUND_RATE_LIMIT": "off",
        }
    )
    return create_app(config, fakeredis.FakeRedis(), clock=lambda: NOW)


APP = make_app()


def body_bytes(kwargs: dict[str, Any]) -> bytes:
    """The exact bytes the request will carry: what the signature must cover."""
    if "json" in kwargs:
        return json.dumps(kwargs.pop("json")).encode()
    data = kwargs.pop("data", b"")
    if isinstance(data, str):
        return data.encode()
    return data if isinstance(data, bytes) else b""


def sign_request(path: str, body: bytes, headers: dict[str, str]) -> None:
    """Sign as the route's real caller would, over the exact body."""
    if path == "/webhooks/events":
        msg_id = headers.get("webhook-id") or "msg_fuzz"
        if not msg_id.isascii() or not msg_id.isprintable():
            msg_id = "msg_fuzz"
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(int(NOW))
        headers["webhook-signature"] = sign(decode_secret(SECRET), msg_id, int(NOW), body)
    elif path == "/webhooks/hubspot":
        stamp = str(int(NOW * 1000))
        headers["X-HubSpot-Request-Timestamp"] = stamp
        headers["X-HubSpot-Signature-v3"] = sign_v3(HUBSPOT_SECRET, "POST", "http://localhost" + path, body, stamp)
    else:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"


def check_no_crash(path: str, response: TestResponse) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code != 500, f"500 on {path}: {text[:300]}"
    assert "Traceback" not in text, f"a traceback in the answer on {path}"
    if response.status_code >= 400 and response.mimetype == "application/json":
        body = response.get_json()
        assert isinstance(body, dict) and set(body) == {"error", "detail"}, f"error body on {path}: {body!r:.300}"
        assert all(isinstance(v, str) and v for v in body.values()), f"error body on {path}: {body!r:.300}"
    elif response.status_code >= 400 and path != "/webhooks/salesforce" and response.mimetype != "text/html":
        raise AssertionError(f"{response.status_code} on {path} is {response.mimetype}, not the JSON error shape")


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    derandomize="PRUNER_FUZZ_EXAMPLES" not in os.environ,
)
def test_no_request_crashes_the_app_or_breaks_the_error_shape(case: schemathesis.Case) -> None:
    case.operation.schema.app = APP  # in-process WSGI transport
    kwargs = case.as_transport_kwargs()
    path = kwargs["path"]
    body = body_bytes(kwargs)
    headers = {k: v for k, v in kwargs.pop("headers", {}).items() if k.lower() not in SIGNED_HEADERS}
    sign_request(path, body, headers)
    response = APP.test_client().open(data=body, headers=headers, **kwargs)
    check_no_crash(path, response)
    # Every other check of schemathesis runs (status codes, content types, response schemas,
    # schema-violating bodies refused). Not "schema-valid bodies accepted": whether a webhook
    # batch is acceptable also depends on the clock (occurredAt at most 24 h ahead) and, for
    # Salesforce, on the XML inside the string, which a JSON Schema cannot state.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
