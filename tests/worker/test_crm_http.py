"""The CRM clients' shared HTTP pieces: Retry-After in both forms, backoff, one retry log line."""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def test_the_policy_retries_retryable_failures_then_raises_one_transient_error() -> None:
    from worker.crm.base import TransientCrmError
    from worker.crm.http import Retryable, RetryPolicy

    slept: list[float] = []
    tries: list[int] = []

    def always_503() -> str:
        tries.append(1)
        raise Retryable("HTTP 503", status=503)

    with pytest.raises(TransientCrmError, match=r"HubSpot POST /crm/v3/objects/tasks: HTTP 503.*gave up after 4"):
        RetryPolicy(max_attempts=4, base_s=0.5, cap_s=8).run(
            "HubSpot", "POST /crm/v3/objects/tasks", always_503, sleep=slept.append
        )
    assert len(tries) == 4 and len(slept) == 3 and all(0.25 <= s <= 8 for s in slept)


def test_the_policy_stops_at_its_sleep_budget_and_at_a_hint_longer_than_a_job_waits() -> None:
    from worker.crm.base import TransientCrmError
    from worker.crm.http import Retryable, RetryPolicy

    slept: list[float] = []

    def asks_for(seconds: float) -> Callable[[], str]:
        def attempt() -> str:
            raise Retryable("HTTP 429", status=429, wait_s=seconds, unsent=True)

        return attempt

    with pytest.raises(TransientCrmError, match="HTTP 429, and no better"):
        RetryPolicy(max_attempts=10, budget_s=25).run("HubSpot", "GET x", asks_for(10), sleep=slept.append)
    assert len(slept) == 2  # 10 + 10 s asleep; a third 10 s would pass the 25 s budget
    slept.clear()
    with pytest.raises(TransientCrmError, match="Retry-After 120 s, longer than a job waits"):
        RetryPolicy(max_attempts=10, max_hint_s=60).run("Salesforce", "GET y", asks_for(120), sleep=slept.append)
    assert slept == []  # not waited out: RQ retries the drain later


def test_a_floor_lengthens_the_wait_and_success_ends_the_retries() -> None:
    from worker.crm.http import Retryable, RetryPolicy

    slept: list[float] = []
    tries: list[int] = []

    def second_time_lucky() -> str:
        tries.append(1)
        if len(tries) < 2:
            raise Retryable.transport(requests_error())
        return "ok"

    policy = RetryPolicy(base_s=0.01, cap_s=0.02)
    assert policy.run("HubSpot", "POST z", second_time_lucky, sleep=slept.append, floor_s=lambda: 10.0) == "ok"
    assert slept == [10.0]


def requests_error() -> Exception:
    import requests

    return requests.ConnectTimeout("http://crm.example/ada@example.com")


def test_a_connection_never_made_is_unsent_and_named_without_its_url() -> None:
    from worker.crm.http import Retryable

    retryable = Retryable.transport(requests_error(), "POST /crm/v3/objects/tasks")
    assert retryable.unsent and str(retryable) == "ConnectTimeout on POST /crm/v3/objects/tasks"
