"""Salesforce's REST API as Pruner calls it: one org, its session, its rate budget, bounded retries.

`SalesforceClient` sends each request under the Redis rate budget every worker shares,
retries connection errors, timeouts, 5xx, 429 and 403 `REQUEST_LIMIT_EXCEEDED` under the
shared policy of worker/crm/http.py (a 429 or REQUEST_LIMIT_EXCEEDED holds back every worker),
logs in again once on a 401 where credentials are configured, and reads the org's daily
usage from `Sforce-Limit-Info`. The executor that turns actions into these calls is
worker/crm/salesforce.py.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from rules.salesforce_ids import is_record_id
from worker.crm.base import CrmError
from worker.crm.http import TRANSPORT_ERRORS, CrmHttpClient, Retryable, RetryPolicy, retry_after_s
from worker.crm.ratelimit import RateLimiter
from worker.crm.settings import SalesforceAuthError, SalesforceSettings
from worker.logs import redact

log = logging.getLogger(__name__)

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


class SalesforceClient(CrmHttpClient):
    """HTTP to one org's REST API: auth, timeouts, rate budget, bounded retries (worker/crm/http.py)."""

    crm = "Salesforce"

    def __init__(
        self,
        instance_url: str,
        token: str,
        api_version: str,
        limiter: RateLimiter | None,
        settings: SalesforceSettings | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = s = settings or SalesforceSettings()
        # A Retry-After past `max_retry_after_s` is not waited out in the job: RQ's retry takes over.
        policy = RetryPolicy(s.max_attempts, s.backoff_initial_s, s.backoff_max_s, max_hint_s=s.max_retry_after_s)
        super().__init__(policy, session, sleep)
        self.instance_url = instance_url.rstrip("/")
        self.base = f"{self.instance_url}/services/data/v{api_version.strip().lstrip('vV')}"
        self.limiter = limiter
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
        self.api_usage: tuple[int, int] | None = None
        # Where login credentials are configured: returns a fresh session id (one retry per 401).
        self.refresh: Callable[[], str] | None = None

    # -- one attempt -------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request (no retry); raise Retryable, SalesforceAuthError, or return the response."""
        try:
            return self._call(method, path, **kwargs)
        except SalesforceAuthError:
            if self.refresh is None:
                raise
            # Sessions expire; with credentials we log in again, once, then give up loudly.
            self.session.headers["Authorization"] = f"Bearer {self.refresh()}"
            log.info("salesforce session refreshed after a 401")
            return self._call(method, path, **kwargs)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if self.limiter is not None:
            try:
                self.limiter.acquire(timeout_s=self.settings.backoff_max_s)
            except TimeoutError:
                raise Retryable("no request slot in the shared rate budget", unsent=True) from None
        url = path if path.startswith("http") else f"{self.base}/{path.lstrip('/')}"
        try:
            response = self.session.request(
                method, url, timeout=(self.settings.connect_timeout_s, self.settings.read_timeout_s), **kwargs
            )
        except TRANSPORT_ERRORS as exc:
            raise Retryable.transport(exc, f"{method} {shape(path)}") from None
        self.requests_sent += 1
        self._track_usage(response)
        status = response.status_code
        self.responded(method, path, status)
        if status == 401:
            raise SalesforceAuthError(
                "Salesforce refused the access token (401 INVALID_SESSION_ID): renew SALESFORCE_ACCESS_TOKEN, "
                "then run `pruner replay --failed`"
            )
        codes = {e.get("errorCode") for e in errors_of(response)} if status in (403, 429) else set()
        if status == 429 or status >= 500 or "REQUEST_LIMIT_EXCEEDED" in codes:
            retry_after = retry_after_s(response.headers.get("Retry-After"))
            limited = status == 429 or "REQUEST_LIMIT_EXCEEDED" in codes
            if limited and self.limiter is not None:
                # Every worker shares the org's limit: hold them all back, not just this one (a
                # server error's Retry-After is this request's business only).
                self.limiter.block(retry_after if retry_after is not None else self.settings.backoff_initial_s)
            what = "REQUEST_LIMIT_EXCEEDED" if "REQUEST_LIMIT_EXCEEDED" in codes else f"HTTP {status}"
            raise Retryable(f"{what} to {method} {shape(path)}", status=status, wait_s=retry_after, unsent=limited)
        return response

    def _track_usage(self, response: requests.Response) -> None:
        match = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match is None:
            return
        used, limit = int(match.group(1)), int(match.group(2))
        previous, self.api_usage = self.api_usage, (used, limit)
        ratio = used / limit if limit else 0.0
        # Once per 5% step: enough to see the trend without a line per request.
        if previous is None or (previous[1] and int(previous[0] / previous[1] * 20) != int(ratio * 20)):
            level = logging.WARNING if ratio >= 0.8 else logging.INFO
            log.log(level, "salesforce api usage %d/%d (%.0f%% of the org's daily requests)", used, limit, ratio * 100)

    # -- retries -----------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send an idempotent request with retries."""
        return self.retrying(lambda: self.call(method, path, **kwargs))

    def query(self, soql: str, retry: bool = True) -> list[dict[str, Any]]:
        """Run a SOQL query, following `nextRecordsUrl`; raise SalesforceQueryError if refused."""

        def once() -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = []
            response = self.call("GET", "query", params={"q": soql})
            while True:
                if response.status_code != 200:
                    raise SalesforceQueryError(describe(response))
                page = response.json()
                records.extend(page.get("records", []))
                next_url = page.get("nextRecordsUrl")
                if page.get("done", True) or not next_url:
                    return records
                response = self.call("GET", f"{self.instance_url}{next_url}")

        return self.retrying(once) if retry else once()


class SalesforceQueryError(CrmError):
    """Salesforce refused a SOQL query (e.g. a field that does not exist in this org)."""


def errors_of(response: requests.Response) -> list[dict[str, Any]]:
    """Return Salesforce's error list (`[{"message", "errorCode", "fields"}]`) from a response, if any."""
    try:
        body = response.json()
    except ValueError:
        return []
    items = body if isinstance(body, list) else [body]
    return [e for e in items if isinstance(e, dict) and ("errorCode" in e or "message" in e)]


def describe(response: requests.Response) -> str:
    """One sentence for a refused request: status, error codes and messages (redacted, short)."""
    errors = errors_of(response)
    if not errors:
        return f"HTTP {response.status_code}"
    parts = [f"{e.get('errorCode') or e.get('statusCode') or 'ERROR'}: {e.get('message', '')}".strip() for e in errors]
    return redact(f"HTTP {response.status_code} " + "; ".join(parts))[:300]


def shape(path: str) -> str:
    """The path without record ids or query strings: logs and errors name the endpoint only."""
    path = path.split("?", 1)[0]
    if path.startswith("http"):
        path = urlsplit(path).path
    return "/".join("{id}" if is_record_id(part) else part for part in path.split("/"))
