"""The CRM clients' shared HTTP pieces: Retry-After in both forms, backoff, one retry log line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from worker.crm.http import backoff_s, retry_after_s

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        (format_datetime(datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC), usegmt=True), 30.0),  # HTTP-date
        ("Mon, 02 Mar 2026 09:59:00 GMT", 0.0),  # in the past: no wait
        ("Monday, 02-Mar-26 10:01:00 GMT", 60.0),  # the obsolete RFC 850 form
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header: str | None, wait: float | None) -> None:
    assert retry_after_s(header, now=lambda: NOW) == wait


def test_backoff_honours_the_hint_with_a_little_jitter_and_grows_otherwise() -> None:
    assert all(30 <= backoff_s(1, 0.5, 30, hint_s=30) <= 31 for _ in range(50))
    first = [backoff_s(1, 1.0, 60) for _ in range(50)]
    fifth = [backoff_s(5, 1.0, 60) for _ in range(50)]
    assert max(first) <= 1.0 and max(fifth) <= 16.0 and min(fifth) >= 0.5
    assert max(backoff_s(20, 1.0, 8.0) for _ in range(50)) <= 8.0


def test_the_retry_log_names_the_endpoint_never_the_url(caplog: pytest.LogCaptureFixture) -> None:
    import requests
    from tenacity import Retrying, stop_after_attempt, wait_none

    from worker.crm.http import retry_logger

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise requests.ConnectionError("https://api.example/crm/v3/objects/contacts/ada@example.com")
        return "ok"

    hook = retry_logger("hubspot", "GET /crm/v3/objects/contacts/{id}", lambda exc: type(exc).__name__)
    with caplog.at_level(logging.WARNING, logger="worker.crm"):
        assert Retrying(stop=stop_after_attempt(5), wait=wait_none(), before_sleep=hook, reraise=True)(flaky) == "ok"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "hubspot GET /crm/v3/objects/contacts/{id}: ConnectionError, retry 1 in 0.0 s",
        "hubspot GET /crm/v3/objects/contacts/{id}: ConnectionError, retry 2 in 0.0 s",
    ]
    assert not any("ada@" in line for line in lines)  # the label, never the URL
