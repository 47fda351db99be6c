"""What every CRM client shares over HTTP: the session, the retry policy, `Retry-After`, chunking.

One place, so that the clients cannot drift apart again (HubSpot used to ignore an HTTP-date
`Retry-After` and log its retries, Salesforce parsed dates and logged nothing, and each had
its own retry loop, backoff schedule and give-up message). A CRM client subclasses
`CrmHttpClient`: its one-attempt send raises `Retryable` for what is worth another try (a
429, a 5xx, a dropped connection, a rate slot not found), and `retrying` runs attempts under
the client's `RetryPolicy` — tenacity underneath, `backoff_s` as the wait, `retry_logger` as
the log line — then raises `TransientCrmError`, so the drain job fails and RQ retries it.

    RetryPolicy(max_attempts=5, base_s=0.5, cap_s=30, budget_s=60, max_hint_s=None)
      attempt 1 --Retryable--> wait: the server's hint (Retry-After, a rate-limit interval)
                               with a little jitter, else jittered exponential backoff
      ...                      stop: attempts used up, the total wait past `budget_s`, or a
                               hint longer than `max_hint_s` (not waited out in a job)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Self, TypeVar

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from worker.crm.base import TransientCrmError

log = logging.getLogger("worker.crm")

T = TypeVar("T")
# requests' failures that may be over in a moment (its messages carry the URL: never shown).
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class Retryable(Exception):
    """One attempt failed in a way worth trying again.

    `reason` is short and names no record (`HTTP 503`, `ReadTimeout`); `wait_s` is the
    server's own hint; `unsent` says the request certainly wrote nothing (a 429 refused at
    the door, a connection never made), so a retry needs no check for a write that landed.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, wait_s: float | None = None, unsent: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.wait_s = wait_s
        self.unsent = unsent

    @classmethod
    def transport(cls, exc: BaseException, where: str = "") -> Retryable:
        """The retryable form of a requests failure: its kind only (its message holds the URL), and `where`."""
        reason = type(exc).__name__ + (f" on {where}" if where else "")
        return cls(reason, unsent=isinstance(exc, requests.ConnectTimeout))


def chunked(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """`items` in slices of at most `size`: a CRM's per-request record limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def body_of(response: requests.Response) -> dict[str, Any]:
    """A response's JSON object; {} when the body is not JSON or not an object (an error page, a list)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds; both forms of RFC 9110 §10.2.3.

    Delay-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`); None when absent
    or unreadable, a date in the past is no wait.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete form may come without a zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def backoff_s(attempt: int, base_s: float, cap_s: float, hint_s: float | None = None) -> float:
    """How long to wait before attempt `attempt + 1`.

    The server's own hint (`Retry-After`, a rate-limit interval) is honoured, with a little
    jitter so that workers do not all come back at the same instant; otherwise exponential
    backoff from `base_s`, capped at `cap_s`, with full jitter above half the base.
    """
    if hint_s is not None:
        return hint_s + random.uniform(0, min(1.0, hint_s * 0.1 + 0.05))
    ceiling = min(cap_s, base_s * 2 ** (attempt - 1))
    return random.uniform(base_s / 2, max(base_s / 2, ceiling))


def retry_logger(
    crm: str, label: str, describe: Callable[[BaseException | None], str]
) -> Callable[[RetryCallState], None]:
    """A tenacity `before_sleep` hook: one warning per retry, naming the endpoint, never the URL.

    `label` names the request without ids or emails (`POST /crm/v3/objects/tasks`);
    `describe` says what failed (`HTTP 503`, `ConnectionError`).
    """

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s %s: %s, retry %d in %.1f s", crm, label, describe(exc), state.attempt_number, state.upcoming_sleep
        )

    return note


@dataclass(frozen=True)
class RetryPolicy:
    """How long a client keeps trying one request before the drain gives up and RQ retries it."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0
    # Total time asleep between attempts of one request (None: only `max_attempts` bounds it).
    budget_s: float | None = None
    # A server asking for a longer wait than this is not waited out in the job (None: any wait).
    max_hint_s: float | None = None

    def beyond_hint(self, exc: BaseException | None) -> bool:
        hint = exc.wait_s if isinstance(exc, Retryable) else None
        return hint is not None and self.max_hint_s is not None and hint > self.max_hint_s

    def run(
        self,
        crm: str,
        label: str,
        attempt: Callable[[], T],
        *,
        sleep: Callable[[float], None] = time.sleep,
        floor_s: Callable[[], float] | None = None,
    ) -> T:
        """Call `attempt` until it returns, retrying `Retryable`; raise TransientCrmError when done trying.

        `crm` names the CRM for people (`HubSpot`), `label` the request without ids or emails;
        `floor_s()` is a least wait before the next attempt (time for a search index to catch up).
        """

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hint = exc.wait_s if isinstance(exc, Retryable) else None
            seconds = backoff_s(state.attempt_number, self.base_s, self.cap_s, hint)
            return max(seconds, floor_s()) if floor_s is not None else seconds

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if state.attempt_number >= self.max_attempts or self.beyond_hint(exc):
                return True
            return self.budget_s is not None and state.idle_for + state.upcoming_sleep > self.budget_s

        retrying = Retrying(
            retry=retry_if_exception_type(Retryable),
            stop=stop,
            wait=wait,
            sleep=sleep,
            before_sleep=retry_logger(crm.lower(), label, lambda exc: str(exc)),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Retryable as exc:
            if self.beyond_hint(exc):
                raise TransientCrmError(
                    f"{crm} {label}: {exc.reason} with Retry-After {exc.wait_s:.0f} s, longer than a job waits "
                    f"({self.max_hint_s:.0f} s); the actions stay queued and RQ retries later"
                ) from None
            raise TransientCrmError(
                f"{crm} {label}: {exc.reason}, and no better on a retry (gave up after {self.max_attempts} "
                "attempts or the retry time budget); the actions stay queued"
            ) from None


class CrmHttpClient:
    """A CRM's API over one `requests.Session`: the session's lifetime, the retry policy, call metrics.

    Subclasses send one attempt (raising `Retryable`) and wrap their calls in `retrying`.
    """

    crm = "crm"  # how people name the CRM in messages: "HubSpot", "Salesforce"

    def __init__(
        self,
        policy: RetryPolicy,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.session = session or requests.Session()
        self.sleep = sleep
        self.requests_sent = 0
        # Called with (method, path, status) after every response: the /metrics CRM call counter.
        self.on_response: Callable[[str, str, int], None] | None = None

    def retrying(
        self, attempt: Callable[[], T], label: str = "request", floor_s: Callable[[], float] | None = None
    ) -> T:
        """Run `attempt` (one or more calls) under the client's retry policy."""
        return self.policy.run(self.crm, label, attempt, sleep=self.sleep, floor_s=floor_s)

    def responded(self, method: str, path: str, status: int) -> None:
        """Count a response (the metrics hook); every send calls this."""
        if self.on_response is not None:
            self.on_response(method, path, status)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
