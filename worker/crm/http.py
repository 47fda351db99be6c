"""What every CRM client shares over HTTP: reading `Retry-After`, the backoff, the retry log line.

One place, so that the two clients cannot drift apart again (HubSpot used to ignore an
HTTP-date `Retry-After` and log its retries, Salesforce parsed dates and logged nothing).
A third CRM's client builds its retry loop from these, as both do: tenacity's `Retrying`
with `backoff_s` as the wait and `retry_logger` as the `before_sleep` hook.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState

log = logging.getLogger("worker.crm")


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
