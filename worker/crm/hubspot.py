"""HubSpot outbound adapter: carry out decided actions through HubSpot's CRM API.

What HubSpot sees (CONTRACT.md "What the CRM sees"):

    mark_lost       contact hs_lead_status=UNQUALIFIED + pruner_lost_reason; the contact's open
                    deals -> dealstage=closedlost + closed_lost_reason
    breakup_task    a task on the contact: send a polite break-up message
    reengage_task   a task on the contact: a friendly check-in
    suppress        unsubscribe the contact's email from everything + pruner_do_not_contact=true

`HubSpotExecutor.execute` gets every pending action of a drain at once and coalesces
them: one `batch/update` per 100 contacts or deals (a single PATCH when only one is
pending), one batch association read, one batch deal read, one batch task create.

Exactly once: the drain (worker/actions.py) only trims actions off the outbox after
`execute` returns, so a drain that fails half-way runs them again. Updates are
idempotent; creating a task or unsubscribing is not something to repeat, so each
action's finished steps are recorded in Redis (`pruner:hubspot:progress`) and skipped
on the next run.

Errors: connection errors, timeouts, 429 and 5xx are retried by `HubSpotClient` with
backoff, then raise `TransientCrmError` (the whole drain is retried by RQ). A 401/403
raises `HubSpotAuthError`: the token or its scopes are wrong for every record, so the
actions stay queued until an operator fixes it. Any other 4xx is a per-record failure:
an `ActionOutcome(ok=False)` whose detail says what HubSpot refused.

Emails and names are never logged: log lines carry counts and record ids only.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from worker.config import Config
from worker.crm.base import ActionOutcome, CrmError, TransientCrmError
from worker.crm.ratelimit import DEFAULT_MARGIN_S, RateLimiter
from worker.errors import ConfigError
from worker.logs import redact
from worker.metrics import count_crm_call, endpoint_template
from worker.policyfile import cached_policy

log = logging.getLogger(__name__)

CRM = "hubspot"
BATCH_LIMIT = 100
TIMEOUT = (5.0, 30.0)  # (connect, read) seconds, on every request
MAX_ATTEMPTS = 6
# Total time spent sleeping between attempts of one request; waiting for the shared
# rate limiter does not count (that is not a failure, only a queue).
MAX_BACKOFF_S = 60.0
PROGRESS_KEY = "pruner:hubspot:progress"
PROGRESS_TTL_S = 14 * 86_400  # as long as the drain remembers done actions
TASK_TO_CONTACT = 204  # HUBSPOT_DEFINED association type: task -> contact
# The steps of each action kind this adapter carries out; progress is recorded per step.
STEPS = {
    "mark_lost": ("contact", "deals"),
    "suppress": ("unsub", "contact"),
    "breakup_task": ("task",),
    "reengage_task": ("task",),
}
ALL_STEPS = sorted({step for steps in STEPS.values() for step in steps})


class HubSpotApiError(CrmError):
    """HubSpot refused a request for good (a 4xx other than 401/403/429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HubSpotNotFound(HubSpotApiError):
    """The record does not exist (deleted or merged)."""


class HubSpotAuthError(CrmError):
    """HubSpot refused the access token or its scopes: no record can be written until that is fixed."""


@dataclass(frozen=True)
class RecordError:
    """Why HubSpot refused one record."""

    status: int
    message: str


class _Retryable(Exception):
    """A response worth trying again (429, 5xx), with the wait the CRM asked for, if any."""

    def __init__(self, status: int, wait_s: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.wait_s = wait_s


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retryable)


def _q(segment: str) -> str:
    # Lead ids come from webhooks: quote every path segment so none can climb the URL.
    return quote(str(segment), safe="")


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(response: requests.Response) -> str:
    """HubSpot's human sentence for an error, redacted (messages may quote property values)."""
    body = _body(response)
    text = str(body.get("message") or "").strip() or f"HTTP {response.status_code}"
    return redact(text)[:300]


def _header_seconds(response: requests.Response) -> float | None:
    """The wait a 429/5xx asks for: `Retry-After` seconds, else HubSpot's rate-limit interval."""
    raw = response.headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass  # an HTTP date: rare enough to fall back to backoff
    if response.status_code == 429:
        interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        if interval:
            try:
                return max(0.0, int(interval) / 1000)
            except ValueError:
                pass
    return None


def _named_ids(body: Mapping[str, Any], key: str = "ids", category: str | None = None) -> set[str]:
    """Ids a HubSpot error body names in `context` (top level or per error), of one error category if given."""
    out: set[str] = set()
    for error in [body, *[e for e in body.get("errors", []) if isinstance(e, dict)]]:
        if category is not None and error.get("category") != category:
            continue
        context = error.get("context")
        if isinstance(context, dict):
            values = context.get(key)
            if isinstance(values, list):
                out.update(str(v) for v in values)
    return out


def _chunks(items: Sequence[Any], size: int = BATCH_LIMIT) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class HubSpotClient:
    """HubSpot's CRM API over one `requests.Session`: timeouts, retries, the shared rate limit."""

    def __init__(
        self,
        base_url: str,
        token: str,
        limiter: RateLimiter | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        max_backoff_s: float = MAX_BACKOFF_S,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"HUBSPOT_API_BASE must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self.session = session or requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "pruner"}
        )
        self.requests_sent = 0
        # Called with (method, path, status) after every response: the /metrics CRM call counter.
        self.on_response: Callable[[str, str, int], None] | None = None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HubSpotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.wait_s is not None:
            # The CRM named its wait: honour it, plus a little jitter so workers do not return together.
            return exc.wait_s + random.uniform(0, min(1.0, exc.wait_s * 0.1 + 0.05))
        # Full-jitter exponential backoff.
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (state.attempt_number - 1))
        return random.uniform(self.backoff_base_s / 2, ceiling)

    def _stop(self, state: RetryCallState) -> bool:
        return state.attempt_number >= self.max_attempts or state.idle_for + state.upcoming_sleep > self.max_backoff_s

    def _before_sleep(self, label: str) -> Callable[[RetryCallState], None]:
        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            what = f"HTTP {exc.status}" if isinstance(exc, _Retryable) else type(exc).__name__
            log.warning("hubspot %s: %s, retry %d in %.1f s", label, what, state.attempt_number, state.upcoming_sleep)
            if isinstance(exc, _Retryable) and exc.status == 429 and exc.wait_s and self.limiter is not None:
                self.limiter.block(exc.wait_s)

        return note

    def _send_once(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any | None
    ) -> requests.Response:
        if self.limiter is not None:
            self.limiter.acquire()
        self.requests_sent += 1
        response = self.session.request(method, self.base_url + path, params=params, json=body, timeout=TIMEOUT)
        status = response.status_code
        if self.on_response is not None:
            self.on_response(method, path, status)
        if status == 429:
            if _body(response).get("policyName") == "DAILY":
                # Retrying within the minute cannot help: the daily budget resets at midnight.
                raise TransientCrmError("HubSpot's daily API limit is used up; the actions stay queued")
            raise _Retryable(status, _header_seconds(response))
        if status >= 500:
            raise _Retryable(status, _header_seconds(response))
        if status in (401, 403):
            raise HubSpotAuthError(
                f"HubSpot refused the access token (HTTP {status}: {_message(response)}); "
                "check HUBSPOT_ACCESS_TOKEN and the private app's scopes"
            )
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        label: str | None = None,
        params: Mapping[str, str] | None = None,
        json: Any | None = None,
    ) -> requests.Response:
        """Send one API request with retries; return any 2xx/4xx response, raise TransientCrmError when exhausted.

        `label` names the request in logs and errors instead of the path, which may hold an email.
        """
        label = label or f"{method} {path}"
        retrying = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=self._stop,
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_sleep(label),
            reraise=True,
        )
        try:
            response: requests.Response = retrying(self._send_once, method, path, params, json)
        except _Retryable as exc:
            raise TransientCrmError(
                f"HubSpot answered HTTP {exc.status} to {label} on every attempt; the actions stay queued"
            ) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            # `from None` and no str(exc): requests' messages carry the URL, which may hold an email.
            raise TransientCrmError(
                f"HubSpot did not answer {label} ({type(exc).__name__}) on any attempt; the actions stay queued"
            ) from None
        return response

    # -- reads -------------------------------------------------------------------------------

    def get_object(
        self, object_type: str, object_id: str, properties: Sequence[str] = (), associations: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Return one record with `properties` and associated ids (GET /crm/v3/objects/{type}/{id})."""
        params = {"properties": ",".join(properties), "associations": ",".join(associations)}
        response = self.request(
            "GET",
            f"/crm/v3/objects/{_q(object_type)}/{_q(object_id)}",
            label=f"GET /crm/v3/objects/{object_type}/{{id}}",
            params={k: v for k, v in params.items() if v},
        )
        if response.status_code == 404:
            raise HubSpotNotFound(404, f"HubSpot {object_type} record {object_id} was not found")
        if not response.ok:
            raise HubSpotApiError(response.status_code, f"HubSpot refused to read {object_type} {object_id}: "
                                  f"{_message(response)}")  # fmt: skip
        return _body(response)

    def associated_ids(self, from_type: str, object_id: str, to_type: str) -> list[str]:
        """Return the ids of `to_type` records associated with one record (v4 associations, all pages)."""
        out: list[str] = []
        after: str | None = None
        while True:
            params = {"limit": "500", **({"after": after} if after else {})}
            response = self.request(
                "GET",
                f"/crm/v4/objects/{_q(from_type)}/{_q(object_id)}/associations/{_q(to_type)}",
                label=f"GET /crm/v4/objects/{from_type}/{{id}}/associations/{to_type}",
                params=params,
            )
            if response.status_code == 404:
                raise HubSpotNotFound(404, f"HubSpot {from_type} record {object_id} was not found")
            if not response.ok:
                raise HubSpotApiError(response.status_code, f"HubSpot refused to list associations of "
                                      f"{from_type} {object_id}: {_message(response)}")  # fmt: skip
            body = _body(response)
            out += [str(r["toObjectId"]) for r in body.get("results", []) if "toObjectId" in r]
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return out

    def batch_associated_ids(self, from_type: str, ids: Sequence[str], to_type: str) -> dict[str, list[str]]:
        """Return {id: associated `to_type` ids} for many records (v4 batch read; missing ids map to [])."""
        out: dict[str, list[str]] = {i: [] for i in ids}
        pending: list[dict[str, str]] = [{"id": i} for i in dict.fromkeys(ids)]
        while pending:
            follow: list[dict[str, str]] = []
            for chunk in _chunks(pending):
                response = self.request(
                    "POST",
                    f"/crm/v4/associations/{_q(from_type)}/{_q(to_type)}/batch/read",
                    json={"inputs": list(chunk)},
                )
                if not response.ok:
                    raise HubSpotApiError(response.status_code, f"HubSpot refused to read {from_type} -> "
                                          f"{to_type} associations: {_message(response)}")  # fmt: skip
                # 207: ids without associations (or gone) come back as errors: they have none to act on.
                for result in _body(response).get("results", []):
                    source = str(result.get("from", {}).get("id"))
                    out.setdefault(source, []).extend(str(t["toObjectId"]) for t in result.get("to", []))
                    after = ((result.get("paging") or {}).get("next") or {}).get("after")
                    if after:
                        follow.append({"id": source, "after": str(after)})
            pending = follow
        return out

    def batch_read(self, object_type: str, ids: Sequence[str], properties: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Return {id: properties} for the records that exist (batch read; missing ids are left out)."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            response = self.request(
                "POST",
                f"/crm/v3/objects/{_q(object_type)}/batch/read",
                json={"properties": list(properties), "inputs": [{"id": i} for i in chunk]},
            )
            if response.status_code == 404:
                continue
            if not response.ok:
                raise HubSpotApiError(response.status_code, f"HubSpot refused to read {object_type}: "
                                      f"{_message(response)}")  # fmt: skip
            for result in _body(response).get("results", []):
                out[str(result.get("id"))] = dict(result.get("properties") or {})
        return out

    # -- writes ------------------------------------------------------------------------------

    def update(self, object_type: str, object_id: str, properties: Mapping[str, str]) -> RecordError | None:
        """PATCH one record; return None, or why HubSpot refused it."""
        response = self.request(
            "PATCH",
            f"/crm/v3/objects/{_q(object_type)}/{_q(object_id)}",
            label=f"PATCH /crm/v3/objects/{object_type}/{{id}}",
            json={"properties": dict(properties)},
        )
        if response.ok:
            return None
        if response.status_code == 404:
            return self._not_found(object_type, object_id)
        return RecordError(
            response.status_code,
            f"HubSpot refused the update of {object_type} record {object_id} "
            f"(HTTP {response.status_code}): {_message(response)}",
        )

    def batch_update(self, object_type: str, updates: Mapping[str, Mapping[str, str]]) -> dict[str, RecordError | None]:
        """Update many records (≤ 100 per call; one PATCH when only one); return {id: None or why refused}.

        Records a 207 reports as failed are retried one by one; so are those a 4xx names,
        since a refused batch writes nothing and the others still need writing.
        """
        out: dict[str, RecordError | None] = {}
        for chunk in _chunks(list(updates)):
            out.update(self._update_chunk(object_type, list(chunk), updates))
        return out

    def _update_chunk(
        self, object_type: str, ids: list[str], updates: Mapping[str, Mapping[str, str]]
    ) -> dict[str, RecordError | None]:
        if len(ids) == 1:
            return {ids[0]: self.update(object_type, ids[0], updates[ids[0]])}
        response = self.request(
            "POST",
            f"/crm/v3/objects/{_q(object_type)}/batch/update",
            json={"inputs": [{"id": i, "properties": dict(updates[i])} for i in ids]},
        )
        if response.status_code == 200:
            return dict.fromkeys(ids)
        body = _body(response)
        # Records HubSpot says do not exist fail for good: asking again one by one would spend budget for a 404.
        gone = _named_ids(body, category="OBJECT_NOT_FOUND") & set(ids)
        out: dict[str, RecordError | None] = {i: self._not_found(object_type, i) for i in ids if i in gone}
        if response.status_code == 207:
            written = {str(r.get("id")) for r in body.get("results", [])}
            out.update((i, None) for i in ids if i in written)
            retry = [i for i in ids if i not in out]
            log.info("hubspot %s batch update: %d of %d refused, %d retried one by one",
                     object_type, len(ids) - len(written), len(ids), len(retry))  # fmt: skip
            for i in retry:
                out[i] = self.update(object_type, i, updates[i])
            return out
        if response.ok:  # another 2xx: HubSpot accepted the batch
            return dict.fromkeys(ids)
        # A refused batch wrote nothing. Its named culprits go one by one, the rest as a smaller batch again.
        named = _named_ids(body) & set(ids)
        rest = [i for i in ids if i not in named]
        if named and rest:
            out.update((i, self.update(object_type, i, updates[i])) for i in ids if i in named and i not in out)
            out.update(self._update_chunk(object_type, rest, updates))
            return out
        out.update((i, self.update(object_type, i, updates[i])) for i in ids if i not in out)
        return out

    @staticmethod
    def _not_found(object_type: str, object_id: str) -> RecordError:
        return RecordError(404, f"HubSpot {object_type} record {object_id} was not found (deleted or merged?)")

    def create_tasks(self, tasks: Sequence[tuple[str, str, Mapping[str, str]]]) -> dict[str, RecordError | None]:
        """Create tasks (trace id, contact id, properties) associated to their contacts; return {trace id: error}.

        One task: `POST /crm/v3/objects/tasks`; several: `batch/create`, each input carrying
        its trace id as `objectWriteTraceId` so a 207 says which ones were created.
        """
        out: dict[str, RecordError | None] = {}
        for chunk in _chunks(list(tasks)):
            if len(chunk) == 1:
                trace, contact, properties = chunk[0]
                out[trace] = self._create_task(contact, properties)
                continue
            inputs = [
                {"properties": dict(p), "associations": self._task_associations(c), "objectWriteTraceId": t}
                for t, c, p in chunk
            ]
            response = self.request("POST", "/crm/v3/objects/tasks/batch/create", json={"inputs": inputs})
            if response.status_code in (200, 201):
                out.update(dict.fromkeys(t for t, _, _ in chunk))
                continue
            body = _body(response)
            if response.status_code == 207:
                created = {str(r.get("objectWriteTraceId")) for r in body.get("results", [])}
                refused = _named_ids(body, "objectWriteTraceId")
                for trace, contact, properties in chunk:
                    if trace in created:
                        out[trace] = None
                    elif trace in refused:
                        out[trace] = self._create_task(contact, properties)
                    else:
                        # HubSpot said neither: creating it again could make a second task.
                        out[trace] = RecordError(207, "HubSpot did not say whether this task was created")
                continue
            # A refused batch created nothing: find the culprits one by one.
            for trace, contact, properties in chunk:
                out[trace] = self._create_task(contact, properties)
        return out

    @staticmethod
    def _task_associations(contact_id: str) -> list[dict[str, Any]]:
        return [
            {
                "to": {"id": contact_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
            }
        ]

    def _create_task(self, contact_id: str, properties: Mapping[str, str]) -> RecordError | None:
        response = self.request(
            "POST",
            "/crm/v3/objects/tasks",
            json={"properties": dict(properties), "associations": self._task_associations(contact_id)},
        )
        if response.ok:
            return None
        return RecordError(
            response.status_code,
            f"HubSpot refused a task for contact {contact_id} (HTTP {response.status_code}): {_message(response)}",
        )

    def unsubscribe_all(self, email: str, contact_id: str) -> RecordError | None:
        """Unsubscribe `email` from every email subscription (communication preferences v4)."""
        response = self.request(
            "POST",
            f"/communication-preferences/v4/statuses/{_q(email)}/unsubscribe-all",
            label="POST /communication-preferences/v4/statuses/{email}/unsubscribe-all",
            params={"channel": "EMAIL"},
        )
        if response.ok:
            return None
        message = _message(response)
        if response.status_code == 400 and "already" in message.lower():
            return None  # already unsubscribed: the goal is met
        return RecordError(
            response.status_code,
            f"HubSpot refused to unsubscribe contact {contact_id} (HTTP {response.status_code}): {message}",
        )


@dataclass(frozen=True)
class HubSpotSettings:
    """Portal-specific names and values (portals rename stages and add options)."""

    lead_status_property: str = "hs_lead_status"
    lost_status: str = "UNQUALIFIED"
    lost_reason_property: str = "pruner_lost_reason"
    deal_stage_property: str = "dealstage"
    deal_lost_stage: str = "closedlost"
    closed_stages: frozenset[str] = frozenset({"closedwon", "closedlost"})
    deal_reason_property: str = "closed_lost_reason"
    do_not_contact_property: str = "pruner_do_not_contact"
    reengage_months: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> HubSpotSettings:
        """Defaults, overridden by the optional `HUBSPOT_*` variables below."""
        names = {
            "HUBSPOT_LEAD_STATUS_PROPERTY": "lead_status_property",
            "HUBSPOT_LOST_STATUS": "lost_status",
            "HUBSPOT_LOST_REASON_PROPERTY": "lost_reason_property",
            "HUBSPOT_DEAL_STAGE_PROPERTY": "deal_stage_property",
            "HUBSPOT_DEAL_LOST_STAGE": "deal_lost_stage",
            "HUBSPOT_DEAL_REASON_PROPERTY": "deal_reason_property",
            "HUBSPOT_DO_NOT_CONTACT_PROPERTY": "do_not_contact_property",
        }
        values: dict[str, Any] = {attr: env[var].strip() for var, attr in names.items() if env.get(var, "").strip()}
        closed = env.get("HUBSPOT_DEAL_CLOSED_STAGES", "").strip()
        if closed:
            values["closed_stages"] = frozenset(s.strip() for s in closed.split(",") if s.strip())
        settings = cls(**values, **overrides)
        if settings.deal_lost_stage not in settings.closed_stages:
            settings = replace(settings, closed_stages=settings.closed_stages | {settings.deal_lost_stage})
        return settings


class Progress:
    """Which steps of which actions already happened in HubSpot (so a re-run drain skips them).

    Members are hashes of (action id, step), scored by time, so the key holds no lead ids
    and old entries are trimmed as new ones arrive. An erasure removes its lead's entries
    (`forget`): a hash of guessable ids is still personal data.
    """

    def __init__(self, connection: redis.Redis, key: str = PROGRESS_KEY, ttl_s: int = PROGRESS_TTL_S) -> None:
        self.redis, self.key, self.ttl_s = connection, key, ttl_s

    @staticmethod
    def _member(action_id: str, step: str) -> str:
        return hashlib.sha256(f"{action_id}\0{step}".encode()).hexdigest()[:32]

    def done(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not pairs:
            return set()
        scores = self.redis.zmscore(self.key, [self._member(a, s) for a, s in pairs])
        return {pair for pair, score in zip(pairs, scores, strict=True) if score is not None}

    def forget(self, action_ids: Iterable[str]) -> int:
        """Remove every step recorded for `action_ids`; return how many entries went."""
        members = [self._member(a, step) for a in action_ids for step in ALL_STEPS]
        return int(self.redis.zrem(self.key, *members)) if members else 0

    def mark(self, pairs: Iterable[tuple[str, str]]) -> None:
        members = {self._member(a, s): time.time() for a, s in pairs}
        if not members:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key, members)
            pipe.zremrangebyscore(self.key, "-inf", time.time() - self.ttl_s)
            pipe.expire(self.key, self.ttl_s)
            pipe.execute()


_REASONS = {
    "no_response": "no response after many follow-ups",
    "deprioritized": "meetings keep being pushed back",
    "effort_exceeds_value": "the effort has outgrown the size of the deal",
    "not_interested": "they said they are not interested",
    "proposal_expired": "the proposal expired without an answer",
}


def _reason_text(reason: str | None) -> str:
    if not reason:
        return "no reason recorded"
    return _REASONS.get(reason, reason.replace("_", " "))


@dataclass
class _Run:
    """Bookkeeping of one `execute` call."""

    failures: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)  # contacts HubSpot does not have

    def fail(self, action_id: str, detail: str) -> None:
        self.failures.setdefault(action_id, detail)  # the first failure is the cause

    def note(self, action_id: str, text: str) -> None:
        self.notes.setdefault(action_id, []).append(text)


class HubSpotExecutor:
    """Carry out Pruner's actions in HubSpot, coalesced into batch calls (worker/crm/base.py `Executor`)."""

    crm = CRM

    def __init__(
        self,
        client: HubSpotClient,
        connection: redis.Redis,
        settings: HubSpotSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.progress = Progress(connection)
        self.settings = settings or HubSpotSettings()
        self.clock = clock

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HubSpotExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def execute(self, actions: Sequence[dict[str, Any]]) -> list[ActionOutcome]:
        """Carry out `actions`; one outcome per action. Raises TransientCrmError when HubSpot stays unavailable."""
        run = _Run()
        valid: list[dict[str, Any]] = []
        for action in actions:
            if action.get("crm") != CRM:
                run.fail(action["id"], f"not a HubSpot action (crm {action.get('crm')!r})")
            elif action.get("kind") not in STEPS:
                run.fail(action["id"], f"unknown action kind {action.get('kind')!r}")
            else:
                valid.append(action)
        steps = [(a["id"], s) for a in valid for s in STEPS[a["kind"]]]
        done = self.progress.done(steps)
        sent_before = self.client.requests_sent
        self._suppress(valid, done, run)
        self._contacts(valid, done, run)
        self._deals(valid, done, run)
        self._tasks(valid, done, run)
        outcomes = []
        for action in actions:
            detail = run.failures.get(action["id"])
            if detail is not None:
                log.warning("hubspot %s for contact %s failed: %s", action.get("kind"), action.get("lead_id"), detail)
                outcomes.append(ActionOutcome(action["id"], False, detail))
            else:
                outcomes.append(ActionOutcome(action["id"], True, "; ".join(run.notes.get(action["id"], []))))
        log.info(
            "hubspot actions executed=%d ok=%d failed=%d http_requests=%d",
            len(actions), len(actions) - len(run.failures), len(run.failures), self.client.requests_sent - sent_before,
        )  # fmt: skip
        return outcomes

    def _finish(self, pairs: list[tuple[str, str]]) -> None:
        # Recorded right after each phase: a later phase failing must not make this one repeat.
        self.progress.mark(pairs)

    # -- phases ------------------------------------------------------------------------------

    def _suppress(self, actions: list[dict[str, Any]], done: set[tuple[str, str]], run: _Run) -> None:
        todo = [a for a in actions if a["kind"] == "suppress" and (a["id"], "unsub") not in done]
        if not todo:
            return
        try:
            found = self.client.batch_read("contacts", [a["lead_id"] for a in todo], ["email"])
        except HubSpotApiError as exc:
            for action in todo:
                run.fail(action["id"], str(exc))
            return
        results: dict[str, RecordError | None] = {}  # per contact: one unsubscribe, however many actions
        finished: list[tuple[str, str]] = []
        try:
            for action in todo:
                contact = action["lead_id"]
                if contact not in found:
                    run.fail(action["id"], f"HubSpot contact {contact} was not found (deleted or merged?)")
                    run.missing.add(contact)
                    continue
                email = str(found[contact].get("email") or "").strip()
                channels = set(action.get("channels") or ["all"])
                if not channels & {"email", "all"}:
                    # RULES.md guardrail 5: a phone-only objection does not opt the person out of email.
                    run.note(action["id"], "do-not-contact by phone only: email subscriptions left as they are")
                    finished.append((action["id"], "unsub"))
                    continue
                if not email:
                    run.note(action["id"], "the contact has no email address: nothing to unsubscribe")
                    finished.append((action["id"], "unsub"))
                    continue
                if contact not in results:
                    results[contact] = self.client.unsubscribe_all(email, contact)
                error = results[contact]
                if error is not None:
                    run.fail(action["id"], error.message)
                else:
                    finished.append((action["id"], "unsub"))
        finally:
            # Also when a later unsubscribe raises: the ones done must not be sent again.
            self._finish(finished)

    def _contacts(self, actions: list[dict[str, Any]], done: set[tuple[str, str]], run: _Run) -> None:
        s = self.settings
        updates: dict[str, dict[str, str]] = {}
        owners: dict[str, list[str]] = {}
        for action in actions:
            # A refused unsubscribe still gets the do-not-contact flag: the more of it HubSpot knows, the better.
            if action["lead_id"] in run.missing or (action["id"], "contact") in done:
                continue
            if action["kind"] == "mark_lost":
                props = {s.lead_status_property: s.lost_status}
                if action.get("reason"):
                    props[s.lost_reason_property] = str(action["reason"])
            elif action["kind"] == "suppress":
                props = {s.do_not_contact_property: "true"}
            else:
                continue
            # One input per contact: HubSpot refuses a batch naming an id twice. Later actions win.
            updates.setdefault(action["lead_id"], {}).update(props)
            owners.setdefault(action["lead_id"], []).append(action["id"])
        if not updates:
            return
        results = self.client.batch_update("contacts", updates)
        finished = []
        for contact, error in results.items():
            for action_id in owners.get(contact, []):
                if error is None:
                    finished.append((action_id, "contact"))
                else:
                    run.fail(action_id, error.message)
        self._finish(finished)

    def _deals(self, actions: list[dict[str, Any]], done: set[tuple[str, str]], run: _Run) -> None:
        s = self.settings
        todo = [
            a
            for a in actions
            if a["kind"] == "mark_lost" and a["id"] not in run.failures and (a["id"], "deals") not in done
        ]
        if not todo:
            return
        try:
            deals_of = self.client.batch_associated_ids("contacts", [a["lead_id"] for a in todo], "deals")
            all_deals = sorted({d for a in todo for d in deals_of.get(a["lead_id"], [])})
            stages = self.client.batch_read("deals", all_deals, [s.deal_stage_property]) if all_deals else {}
        except HubSpotApiError as exc:
            for action in todo:
                run.fail(action["id"], str(exc))
            return
        updates: dict[str, dict[str, str]] = {}
        owned: dict[str, list[str]] = {}
        for action in todo:
            open_deals = [
                d
                for d in deals_of.get(action["lead_id"], [])
                if d in stages and stages[d].get(s.deal_stage_property) not in s.closed_stages
            ]
            owned[action["id"]] = open_deals
            for deal in open_deals:
                props = {s.deal_stage_property: s.deal_lost_stage}
                if action.get("reason"):
                    props[s.deal_reason_property] = str(action["reason"])
                updates.setdefault(deal, {}).update(props)
        results = self.client.batch_update("deals", updates) if updates else {}
        finished = []
        for action in todo:
            # A deal deleted since we read it has nothing left to close: not a failure.
            errors = [e for d in owned[action["id"]] if (e := results.get(d)) is not None and e.status != 404]
            if errors:
                run.fail(action["id"], errors[0].message)
            else:
                finished.append((action["id"], "deals"))
                closed = len(owned[action["id"]])
                run.note(action["id"], f"{closed} open deal{'s' if closed != 1 else ''} closed lost")
        self._finish(finished)

    def _tasks(self, actions: list[dict[str, Any]], done: set[tuple[str, str]], run: _Run) -> None:
        suppressed_at = {a["lead_id"]: i for i, a in enumerate(actions) if a["kind"] == "suppress"}
        todo = []
        for i, action in enumerate(actions):
            if action["kind"] not in ("breakup_task", "reengage_task") or (action["id"], "task") in done:
                continue
            if suppressed_at.get(action["lead_id"], -1) > i:
                # Do-not-contact wins (RULES.md guardrail 4), even inside one batch.
                run.note(action["id"], "skipped: the lead asked not to be contacted")
                continue
            todo.append(action)
        if not todo:
            return
        now_ms = str(int(self.clock() * 1000))
        # One batch at a time, each recorded before the next: if a later batch raises, the tasks
        # already created must not be created again when the drain is retried.
        for chunk in _chunks(todo):
            results = self.client.create_tasks([(a["id"], a["lead_id"], self._task(a, now_ms)) for a in chunk])
            finished = []
            for action in chunk:
                error = results.get(action["id"])
                if error is None:
                    finished.append((action["id"], "task"))
                else:
                    run.fail(action["id"], error.message)
            self._finish(finished)

    def _task(self, action: dict[str, Any], now_ms: str) -> dict[str, str]:
        reason = _reason_text(action.get("reason"))
        if action["kind"] == "breakup_task":
            subject = "Send a polite break-up message"
            body = (
                f"Pruner suggests closing the loop with this lead ({reason}). Write a short, polite break-up "
                "message: thank them for their time, say clearly that you are stopping your follow-ups, leave "
                "the door open should things change, and offer one last piece of value (a useful article, "
                "benchmark or introduction). A reply during the grace period makes the lead active again."
            )
            task_type = "EMAIL"
        else:
            months = self.settings.reengage_months
            subject = f"Check in: it has been {months} months"
            body = (
                f"This lead was marked lost about {months} months ago ({reason}). Send a friendly, no-pressure "
                "check-in: say hi, ask how things are going and whether priorities have changed, and share "
                "something useful. No hard sell."
            )
            task_type = "TODO"
        return {
            "hs_task_subject": subject,
            "hs_task_body": f"{body}\n\nPruner action {action['id']}",
            "hs_timestamp": now_ms,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "MEDIUM",
            "hs_task_type": task_type,
        }


def build_executor(config: Config, connection: redis.Redis) -> HubSpotExecutor:
    """Build the HubSpot executor from the configuration; raise ConfigError when it cannot act."""
    if not config.hubspot_access_token:
        raise ConfigError(
            "HUBSPOT_ACCESS_TOKEN is not set, so Pruner cannot write its decisions back to HubSpot "
            "(set the private app token, or PRUNER_DRY_RUN=1 to only record decisions)"
        )
    months = max(1, round(cached_policy(config.policy_path).reengage_after_days / 30))
    client = build_client(config, connection)
    return HubSpotExecutor(client, connection, replace(config.hubspot, reengage_months=months))


def build_client(config: Config, connection: redis.Redis) -> HubSpotClient:
    """Build the API client (shared rate limit, call metrics); used to fetch thin webhook events too."""
    if not config.hubspot_access_token:
        raise ConfigError("HUBSPOT_ACCESS_TOKEN is not set, so Pruner cannot read engagements from HubSpot")
    limit, window = config.hubspot_rate_limit
    limiter = RateLimiter(connection, limit, window, margin_s=min(DEFAULT_MARGIN_S, window * 0.05))
    client = HubSpotClient(config.hubspot_api_base, config.hubspot_access_token, limiter)
    client.on_response = lambda method, path, status: count_crm_call(
        connection, "hubspot", f"{method} {endpoint_template(path)}", status
    )
    return client
