"""Builders shared by the tests: signed requests with timestamps computed at call time."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import strategies as st

from webhooks.signatures import sign
from worker.secrets import decode_secret

# The real Redis the integration tests use: 127.0.0.1:6379 unless PRUNER_TEST_REDIS names another
# server (host:port), so two checkouts can run their suites side by side without flushing each other.
TEST_REDIS = os.environ.get("PRUNER_TEST_REDIS", "127.0.0.1:6379")


def redis_url_for_tests(db: int) -> str:
    """The URL of database `db` on the test Redis."""
    return f"redis://{TEST_REDIS}/{db}"


SECRET = "whsec_" + base64.b64encode(b"pruner-test-secret-32-bytes-long").decode()
ADMIN_TOKEN = "test-admin-token"


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(
    etype: str = "email_sent",
    lead_id: str = "lead-1",
    crm: str = "hubspot",
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    at = at or datetime.now(tz=UTC) - timedelta(hours=1)
    return {
        "id": event_id or f"evt-{uuid.uuid4().hex}",
        "type": etype,
        "crm": crm,
        "lead_id": lead_id,
        "occurred_at": iso(at),
        "data": data or {},
    }


def signed_headers(
    body: bytes, secret: str = SECRET, timestamp: int | None = None, msg_id: str | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(decode_secret(secret), msg_id, timestamp, body),
        "content-type": "application/json",
    }


def batch_body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"events": events}).encode()


# Leaves include what JSON allows and Python's json decodes, but a float or UTF-8 cannot hold.
awkward_values = st.sampled_from([10**400, -(10**400), 2**63, 1e308, -0.0, "\ud800x", " ", "", "\u0000"])


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A def, not a lambda: hypothesis checks that `extend` uses its argument by parsing its
    # source, and a lambda inside a multi-line call sometimes parses as not using it, which
    # raised a HypothesisDeprecationWarning (an error here) on some runs and not others.
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) | awkward_values,
    _containers,
    max_leaves=6,
)


def require_tool(command: str, package: str) -> str:
    """The path of a Debian tool a test needs: skipped locally without it, failed in CI (`.ci/run` installs it)."""
    path = shutil.which(command)
    if path is None:
        message = f"needs `{command}` (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def plain(value: bytes) -> bytes:
    """A stored string with what compression hides put back: a packed record, a log's packed fold.

    For tests that look for personal data in every byte of Redis: compressed, an email would
    not be found even where it is kept.
    """
    from worker import compression, eventlog

    if compression.is_packed(value):
        return compression.unpack(value)
    if value[:1] in (b"\x02", b"\x04", eventlog.FOLDED):  # a folded log of any version
        try:
            log = eventlog.read(value)
        except Exception:  # a value of another kind that merely starts with the same byte
            return value
        if log.fold is not None:
            return value + eventlog.fold_bytes(log.fold)
    return value
