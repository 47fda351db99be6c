"""HubSpot's CRM API as Pruner calls it: one `requests.Session`, retries with backoff, the shared rate limit.

`HubSpotClient` sends each request under the rate limiter every worker shares, retries
connection errors, timeouts, 429 (honouring `Retry-After` and HubSpot's interval header) and
5xx under the shared retry policy of worker/crm/http.py, and raises `TransientCrmError` when they last;
401/403 raise `HubSpotAuthError`, other 4xx come back to the caller. The executor that
turns actions into these calls is worker/crm/hubspot.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import requests

from rules.tasktext import TaskText
from worker.crm.base import TransientCrmError
from worker.crm.http import TRANSPORT_ERRORS, CrmHttpClient, Retryable, RetryPolicy, chunked
from worker.crm.hubspot_responses import (
    HubSpotApiError,
    HubSpotAuthError,
    HubSpotNotFound,
    RecordError,
    body_of,
    header_seconds,
    message_of,
    named_ids,
    not_found,
    q,
)
from worker.crm.hubspot_tasks import ASSOCIATION_BATCH_LIMIT, BATCH_LIMIT, TaskCreation, TaskResults
from worker.crm.ratelimit import DEFAULT_MARGIN_S, RateLimiter
from worker.errors import ConfigError
from worker.metrics import count_crm_call, endpoint_template

if TYPE_CHECKING:  # annotations only: worker.config imports worker.crm (settings, rate limits)
    from worker.config import Config

log = logging.getLogger(__name__)

CRM = "hubspot"
TIMEOUT = (5.0, 30.0)  # (connect, read) seconds, on every request
MAX_ATTEMPTS = 6
# Total time spent sleeping between attempts of one request; waiting for the shared
# rate limiter does not count (that is not a failure, only a queue).
MAX_BACKOFF_S = 60.0
# How long HubSpot's search may take to see a record just written (unconfirmed; see above).
SEARCH_DELAY_S = 10.0


T = TypeVar("T")
# Says each task action's text (worker/tasktexts.py): {action id: subject and body}.
TaskTextsFor = Callable[[Sequence[Mapping[str, Any]]], Mapping[str, TaskText]]
OWNER_PROPERTY = "hubspot_owner_id"  # the contact's owner, and the task's assignee: one property name on both


class HubSpotClient(CrmHttpClient):
    """HubSpot's CRM API over one `requests.Session`: timeouts, retries, the shared rate limit."""

    crm = "HubSpot"

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
        search_delay_s: float = SEARCH_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"HUBSPOT_API_BASE must start with http:// or https://, got {base_url!r}")
        policy = RetryPolicy(max_attempts, backoff_base_s, backoff_cap_s, budget_s=max_backoff_s)
        super().__init__(policy, session, sleep)
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.search_delay_s = search_delay_s
        self.session.headers.update(
            {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "pruner"}
        )

    # -- transport ---------------------------------------------------------------------------

    def send_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any | None,
        also: RateLimiter | None = None,
    ) -> requests.Response:
        """One attempt under the shared limit, and `also` (a second budget, e.g. HubSpot's search
        limit) taken last: a slot taken before a wait for the first would be spent early."""
        if self.limiter is not None:
            self.limiter.acquire()
        if also is not None:
            also.acquire()
        self.requests_sent += 1
        try:
            response = self.session.request(method, self.base_url + path, params=params, json=body, timeout=TIMEOUT)
        except TRANSPORT_ERRORS as exc:
            raise Retryable.transport(exc) from None
        status = response.status_code
        self.responded(method, path, status)
        if status == 429:
            if body_of(response).get("policyName") == "DAILY":
                # Retrying within the minute cannot help: the daily budget resets at midnight.
                raise TransientCrmError("HubSpot's daily API limit is used up; the actions stay queued")
            wait_s = header_seconds(response)
            if wait_s and self.limiter is not None:
                # Every worker holds back, also when this one gives up because the wait is past its budget.
                self.limiter.block(wait_s)
            raise Retryable("HTTP 429", status=429, wait_s=wait_s, unsent=True)
        if status >= 500:
            raise Retryable(f"HTTP {status}", status=status, wait_s=header_seconds(response))
        if status in (401, 403):
            raise HubSpotAuthError(
                f"HubSpot refused the access token (HTTP {status}: {message_of(response)}); "
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
        also: RateLimiter | None = None,
    ) -> requests.Response:
        """Send one API request with retries; return any 2xx/4xx response, raise TransientCrmError when exhausted.

        `label` names the request in logs and errors instead of the path, which may hold an email;
        `also` is a second rate budget each attempt counts against (`send_once`).
        """
        label = label or f"{method} {path}"
        return self._retrying(label, lambda: self.send_once(method, path, params, json, also))

    def _retrying(self, label: str, attempt: Callable[[], T], searching: Callable[[], bool] | None = None) -> T:
        """Call `attempt` under the retry policy; raise TransientCrmError when exhausted.

        While `searching()` is true the next attempt starts with a search for writes that may
        have happened: the wait before it is at least `search_delay_s`, for the index to catch up.
        """
        floor = None if searching is None else (lambda: self.search_delay_s if searching() else 0.0)
        return self.retrying(attempt, label, floor)

    # -- reads -------------------------------------------------------------------------------

    def get_object(
        self, object_type: str, object_id: str, properties: Sequence[str] = (), associations: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Return one record with `properties` and associated ids (GET /crm/v3/objects/{type}/{id})."""
        params = {"properties": ",".join(properties), "associations": ",".join(associations)}
        response = self.request(
            "GET",
            f"/crm/v3/objects/{q(object_type)}/{q(object_id)}",
            label=f"GET /crm/v3/objects/{object_type}/{{id}}",
            params={k: v for k, v in params.items() if v},
        )
        if response.status_code == 404:
            raise HubSpotNotFound(404, f"HubSpot {object_type} record {object_id} was not found")
        if not response.ok:
            raise HubSpotApiError(response.status_code, f"HubSpot refused to read {object_type} {object_id}: "
                                  f"{message_of(response)}")  # fmt: skip
        return body_of(response)

    def associated_ids(self, from_type: str, object_id: str, to_type: str) -> list[str]:
        """Return the ids of `to_type` records associated with one record (v4 associations, all pages)."""
        out: list[str] = []
        after: str | None = None
        while True:
            params = {"limit": "500", **({"after": after} if after else {})}
            response = self.request(
                "GET",
                f"/crm/v4/objects/{q(from_type)}/{q(object_id)}/associations/{q(to_type)}",
                label=f"GET /crm/v4/objects/{from_type}/{{id}}/associations/{to_type}",
                params=params,
            )
            if response.status_code == 404:
                raise HubSpotNotFound(404, f"HubSpot {from_type} record {object_id} was not found")
            if not response.ok:
                raise HubSpotApiError(response.status_code, f"HubSpot refused to list associations of "
                                      f"{from_type} {object_id}: {message_of(response)}")  # fmt: skip
            body = body_of(response)
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
            for chunk in chunked(pending, ASSOCIATION_BATCH_LIMIT):
                response = self.request(
                    "POST",
                    f"/crm/v4/associations/{q(from_type)}/{q(to_type)}/batch/read",
                    json={"inputs": list(chunk)},
                )
                if not response.ok:
                    raise HubSpotApiError(response.status_code, f"HubSpot refused to read {from_type} -> "
                                          f"{to_type} associations: {message_of(response)}")  # fmt: skip
                # 207: ids without associations (or gone) come back as errors: they have none to act on.
                for result in body_of(response).get("results", []):
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
        for chunk in chunked(list(dict.fromkeys(ids)), BATCH_LIMIT):
            response = self.request(
                "POST",
                f"/crm/v3/objects/{q(object_type)}/batch/read",
                json={"properties": list(properties), "inputs": [{"id": i} for i in chunk]},
            )
            if response.status_code == 404:
                continue
            if not response.ok:
                raise HubSpotApiError(response.status_code, f"HubSpot refused to read {object_type}: "
                                      f"{message_of(response)}")  # fmt: skip
            for result in body_of(response).get("results", []):
                out[str(result.get("id"))] = dict(result.get("properties") or {})
        return out

    # -- writes ------------------------------------------------------------------------------

    def update(self, object_type: str, object_id: str, properties: Mapping[str, str]) -> RecordError | None:
        """PATCH one record; return None, or why HubSpot refused it."""
        response = self.request(
            "PATCH",
            f"/crm/v3/objects/{q(object_type)}/{q(object_id)}",
            label=f"PATCH /crm/v3/objects/{object_type}/{{id}}",
            json={"properties": dict(properties)},
        )
        if response.ok:
            return None
        if response.status_code == 404:
            return not_found(object_type, object_id)
        return RecordError(
            response.status_code,
            f"HubSpot refused the update of {object_type} record {object_id} "
            f"(HTTP {response.status_code}): {message_of(response)}",
        )

    def batch_update(self, object_type: str, updates: Mapping[str, Mapping[str, str]]) -> dict[str, RecordError | None]:
        """Update many records (≤ 100 per call; one PATCH when only one); return {id: None or why refused}.

        Records a 207 reports as failed are retried one by one; so are those a 4xx names,
        since a refused batch writes nothing and the others still need writing.
        """
        out: dict[str, RecordError | None] = {}
        for chunk in chunked(list(updates), BATCH_LIMIT):
            out.update(self._update_chunk(object_type, list(chunk), updates))
        return out

    def _update_chunk(
        self, object_type: str, ids: list[str], updates: Mapping[str, Mapping[str, str]]
    ) -> dict[str, RecordError | None]:
        if len(ids) == 1:
            return {ids[0]: self.update(object_type, ids[0], updates[ids[0]])}
        response = self.request(
            "POST",
            f"/crm/v3/objects/{q(object_type)}/batch/update",
            json={"inputs": [{"id": i, "properties": dict(updates[i])} for i in ids]},
        )
        if response.status_code == 200:
            return dict.fromkeys(ids)
        body = body_of(response)
        # Records HubSpot says do not exist fail for good: asking again one by one would spend budget for a 404.
        gone = named_ids(body, category="OBJECT_NOT_FOUND") & set(ids)
        out: dict[str, RecordError | None] = {i: not_found(object_type, i) for i in ids if i in gone}
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
        named = named_ids(body) & set(ids)
        rest = [i for i in ids if i not in named]
        if named and rest:
            out.update((i, self.update(object_type, i, updates[i])) for i in ids if i in named and i not in out)
            out.update(self._update_chunk(object_type, rest, updates))
            return out
        out.update((i, self.update(object_type, i, updates[i])) for i in ids if i not in out)
        return out

    def create_tasks(
        self,
        tasks: Sequence[tuple[str, str, Mapping[str, str]]],
        *,
        unsure: Collection[str] = (),
        on_result: TaskResults | None = None,
    ) -> dict[str, RecordError | None]:
        """Create tasks associated to their contacts, never one twice: worker/crm/hubspot_tasks.py."""
        return TaskCreation(self).create(tasks, unsure=unsure, on_result=on_result)

    def unsubscribed_all(self, email: str) -> bool:
        """Whether `email` is already unsubscribed from all email (an empty result means it is not)."""
        label = "GET /communication-preferences/v4/statuses/{email}/unsubscribe-all"
        return self._retrying(label, lambda: self._unsubscribed_now(email))

    def _unsubscribed_now(self, email: str) -> bool:
        """One status read, for `unsubscribed_all` and inside `unsubscribe_all`'s attempts (raises to retry)."""
        path = f"/communication-preferences/v4/statuses/{q(email)}/unsubscribe-all"
        response = self.send_once("GET", path, {"channel": "EMAIL"}, None)
        if not response.ok:
            return False  # unknown: sending the unsubscribe again is safe, only not exactly-once
        results = (response.json() or {}).get("results") or []
        return any(r.get("channel") == "EMAIL" and r.get("status") == "NOT_SUBSCRIBED" for r in results)

    def gdpr_delete(self, contact_id: str) -> RecordError | None:
        """Permanently delete a contact, GDPR-compliant (`POST /crm/v3/objects/contacts/gdpr-delete`, 204).

        A contact HubSpot does not have (404) is no error: deleted already, the goal is met.
        """
        response = self.request("POST", "/crm/v3/objects/contacts/gdpr-delete", json={"objectId": str(contact_id)})
        if response.ok or response.status_code == 404:
            return None
        return RecordError(
            response.status_code,
            f"HubSpot refused the GDPR delete of contact {contact_id} "
            f"(HTTP {response.status_code}): {message_of(response)}",
        )

    def unsubscribe_all(self, email: str, contact_id: str) -> RecordError | None:
        """Unsubscribe `email` from every email subscription (communication preferences v4).

        After a failure HubSpot may have acted on (5xx, timeout, dropped connection: a 504
        from its gateway is answered after the write), the next attempt first asks whether
        the person is unsubscribed already, so a retry never sends the same unsubscribe twice.
        A 429, or a connection never made, wrote nothing and is retried as it is.
        """
        path = f"/communication-preferences/v4/statuses/{q(email)}/unsubscribe-all"
        label = "POST /communication-preferences/v4/statuses/{email}/unsubscribe-all"
        in_doubt = False

        def attempt() -> requests.Response | None:
            nonlocal in_doubt
            if in_doubt and self._unsubscribed_now(email):
                return None
            try:
                return self.send_once("POST", path, {"channel": "EMAIL"}, None)
            except Retryable as exc:
                in_doubt = in_doubt or not exc.unsent
                raise

        response = self._retrying(label, attempt)
        if response is None:
            log.info("hubspot unsubscribe for contact %s had landed before its answer was lost", contact_id)
            return None
        if response.ok:
            return None
        message = message_of(response)
        if response.status_code == 400 and "already" in message.lower():
            return None  # already unsubscribed: the goal is met
        return RecordError(
            response.status_code,
            f"HubSpot refused to unsubscribe contact {contact_id} (HTTP {response.status_code}): {message}",
        )


def build_client(config: Config, connection: redis.Redis, share_percent: int = 100) -> HubSpotClient:
    """Build the API client (shared rate limit, call metrics); used to fetch thin webhook events too.

    `share_percent` below 100 (a backfill) takes request slots only while the shared window
    holds fewer than that share of the limit: everyone else, with the whole limit, still
    finds the rest of the window free.
    """
    if not config.hubspot_access_token:
        raise ConfigError("HUBSPOT_ACCESS_TOKEN is not set, so Pruner cannot read engagements from HubSpot")
    limit, window = config.hubspot_rate_limit
    limit = max(1, limit * share_percent // 100)
    limiter = RateLimiter(connection, limit, window, margin_s=min(DEFAULT_MARGIN_S, window * 0.05))
    client = HubSpotClient(config.hubspot_api_base, config.hubspot_access_token, limiter)
    client.on_response = lambda method, path, status: count_crm_call(
        connection, "hubspot", f"{method} {endpoint_template(path)}", status
    )
    return client
