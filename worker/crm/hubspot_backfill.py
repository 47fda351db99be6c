"""Reading a HubSpot portal's history through the CRM v3 API, for `pruner backfill hubspot`.

Every request goes through `HubSpotClient.request` (worker/crm/hubspot_client.py): the rate
limit every worker shares, and the retry policy of worker/crm/http.py (429 with `Retry-After`
or HubSpot's interval header, 5xx, timeouts). Nothing here retries by itself.

- Contacts and deals: `GET /crm/v3/objects/{type}` lists every record, in pages joined by
  `paging.next.after` (at most 50 per page when `propertiesWithHistory` is asked for), with
  the history of the properties the mapping reads.
- Calls, emails and meetings: `POST /crm/v3/objects/{type}/search`, `hs_timestamp` in the
  window, sorted by it, 200 per page. A search pages through at most 10,000 results (the next
  page is a 400): before reaching that, the window is split at the last `hs_timestamp` seen
  and a new query starts there (`GTE`, so records sharing that millisecond are read again,
  never skipped). Search requests have their own budget (HubSpot allows ~4 per second), kept
  in Redis like the portal's.
- Contact associations: `POST /crm/v4/associations/{type}/contacts/batch/read`, up to 1,000 ids a request.
  `search_with_contacts` reads the associations of up to five search pages at once, on a
  background thread while the next searches wait for their slots: with a read per page, and
  the reader waiting on each, the portal budget became a second bottleneck beside the search
  budget (bench.backfill: 0.79 of the ceiling the limits allow).
- Known records with their history (reconciliation): `POST /crm/v3/objects/{type}/batch/read`
  with `propertiesWithHistory`, 50 ids a request (HubSpot takes 100 inputs; 50 is what it lets
  a list page carry with history, and what it allows a batch with history is not documented).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import redis
import requests

from rules.hubspot_map import epoch_ms
from worker.crm.http import body_of
from worker.crm.hubspot_client import HubSpotClient
from worker.crm.hubspot_responses import HubSpotApiError
from worker.crm.hubspot_tasks import ASSOCIATION_BATCH_LIMIT
from worker.crm.ratelimit import RateLimiter

SEARCH_CAP = 10_000  # results one search query can page through
SEARCH_PAGE = 200  # search results per request (HubSpot's maximum)
LIST_PAGE = 100  # list results per request (HubSpot's maximum)
HISTORY_PAGE = 50  # list results (and batch read ids) per request with propertiesWithHistory
TIME_PROPERTY = "hs_timestamp"  # when an engagement happened
SEARCH_RATE = (4, 1.0)  # search requests per second, for the whole portal (HUBSPOT_SEARCH_RATE_LIMIT)
SEARCH_KEY = "pruner:ratelimit:hubspot:search"
# Slack on the one-second search window: requests reach HubSpot with some milliseconds of jitter,
# and a search refused with 429 costs a second's wait.
SEARCH_MARGIN_S = 0.05
# Groups of pages whose association read may be in flight while the next searches are sent:
# enough to keep the searches going, few enough to hold little in memory (2,000 records or so).
AHEAD = 2

T = TypeVar("T")


@dataclass
class Page:
    """One page of records, where the next one starts, and (search) how many the query matched."""

    records: list[dict[str, Any]]
    after: str | None
    total: int | None = None


@dataclass
class SearchPage:
    """A page of a time-windowed search; a backfill stopped after it can restart at `resume_ms` losing nothing."""

    records: list[dict[str, Any]]
    resume_ms: int
    left: int | None  # records still to come in the window, as far as HubSpot said


class SearchCapError(HubSpotApiError):
    """More records share one `hs_timestamp` millisecond than a search can page through."""


def _refused(response: requests.Response, what: str) -> HubSpotApiError:
    # HubSpot's `category` says what kind of refusal; its message may quote values, so it stays out.
    category = body_of(response).get("category") or "no category"
    return HubSpotApiError(response.status_code, f"HubSpot refused to {what} (HTTP {response.status_code}, {category})")


def _next(body: dict[str, Any]) -> str | None:
    after = ((body.get("paging") or {}).get("next") or {}).get("after")
    return str(after) if after not in (None, "") else None


class HubSpotHistory:
    """The reads a backfill makes, over the API client every worker uses."""

    def __init__(
        self, client: HubSpotClient, search_limiter: RateLimiter | None = None, search_cap: int = SEARCH_CAP
    ) -> None:
        self.client = client
        self.search_limiter = search_limiter
        self.search_cap = search_cap

    def list_page(
        self, object_type: str, properties: Sequence[str], history: Sequence[str] = (), after: str | None = None
    ) -> Page:
        """One page of every `object_type` record, with `properties` and the history of `history`."""
        params = {"limit": str(HISTORY_PAGE if history else LIST_PAGE), "properties": ",".join(properties)}
        if history:
            params["propertiesWithHistory"] = ",".join(history)
        if after:
            params["after"] = after
        response = self.client.request("GET", f"/crm/v3/objects/{object_type}", params=params)
        if not response.ok:
            raise _refused(response, f"list {object_type}")
        body = body_of(response)
        return Page([r for r in body.get("results", []) if isinstance(r, dict) and r.get("id")], _next(body))

    def read_history(
        self, object_type: str, ids: Sequence[str], properties: Sequence[str], history: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The records `ids` with `properties` and the history of `history`; ids HubSpot no longer has are left out."""
        found: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), HISTORY_PAGE):
            body = {
                "inputs": [{"id": i} for i in unique[start : start + HISTORY_PAGE]],
                "properties": list(properties),
                "propertiesWithHistory": list(history),
            }
            response = self.client.request("POST", f"/crm/v3/objects/{object_type}/batch/read", json=body)
            # 207: some ids are gone (deleted or merged since they changed); the others are read.
            if not response.ok:
                raise _refused(response, f"read {object_type}")
            found += [r for r in body_of(response).get("results", []) if isinstance(r, dict) and r.get("id")]
        return found

    def search_page(
        self,
        object_type: str,
        properties: Sequence[str],
        from_ms: int,
        until_ms: int,
        after: str | None = None,
        by: str = TIME_PROPERTY,
    ) -> Page | None:
        """One page of `object_type` records with `from_ms` <= `by` < `until_ms`, oldest first.

        `by` is the time property windowed and sorted on: when the engagement happened
        (`hs_timestamp`, the backfill), or when it was last changed (`hs_lastmodifieddate`,
        reconciliation, worker/reconcile.py).

        None when HubSpot answers 400 to a page after the first: the query went past what a search
        may page through (the caller starts a new query where this one got to).
        """
        body: dict[str, Any] = {
            "filterGroups": [
                {
                    "filters": [
                        {"propertyName": by, "operator": "GTE", "value": str(from_ms)},
                        {"propertyName": by, "operator": "LT", "value": str(until_ms)},
                    ]
                }
            ],
            "sorts": [{"propertyName": by, "direction": "ASCENDING"}],
            "properties": list(properties),
            "limit": SEARCH_PAGE,
        }
        if after:
            body["after"] = after
        # Each attempt (a retry too) takes a search slot just before it is sent (`also`).
        path = f"/crm/v3/objects/{object_type}/search"
        response = self.client.request("POST", path, json=body, also=self.search_limiter)
        if response.status_code == 400 and after:
            return None
        if not response.ok:
            raise _refused(response, f"search {object_type}")
        answer = body_of(response)
        records = [r for r in answer.get("results", []) if isinstance(r, dict) and r.get("id")]
        total = answer.get("total")
        return Page(records, _next(answer), int(total) if isinstance(total, int) else None)

    def search_window(
        self,
        object_type: str,
        properties: Sequence[str],
        from_ms: int,
        until_ms: int,
        by: str = TIME_PROPERTY,
        keyset: bool = False,
    ) -> Iterator[SearchPage]:
        """Every `object_type` record with `from_ms` <= `by` < `until_ms`, a page at a time, oldest first.

        `keyset`: each page is a new query from the last `by` seen rather than the next offset
        (the same number of requests). For a modification date: a record changed while we page
        moves later in the order, and with offsets the records behind it would each move up one
        place, one of them across the page boundary unseen. Changed records are read again instead.
        """
        wanted = list(dict.fromkeys([*properties, by]))
        start, after, read, last_ms = from_ms, None, 0, from_ms
        at_last: set[str] = set()  # ids seen with hs_timestamp == last_ms: a new query from last_ms reads them again
        skip: set[str] = set()
        while True:
            page = None
            if read + SEARCH_PAGE <= self.search_cap:
                page = self.search_page(object_type, wanted, start, until_ms, after, by)
            if page is None:
                # The query cannot page further: a new one from the last time seen.
                start, after, read = self._split(object_type, start, last_ms, by), None, 0
                skip = set(at_last)
                continue
            read += len(page.records)
            for record in page.records:
                stamp = _ms(record, by)
                if stamp is not None and stamp > last_ms:
                    last_ms, at_last = stamp, set()
                if stamp == last_ms:
                    at_last.add(str(record["id"]))
            fresh = [r for r in page.records if str(r["id"]) not in skip]
            left = None if page.total is None else max(0, page.total - read)
            yield SearchPage(fresh, last_ms, left if page.after else 0)
            if not page.after or not page.records:
                return
            if keyset and last_ms > start:
                start, after, read = last_ms, None, 0
                skip = set(at_last)
            else:
                after = page.after

    def _split(self, object_type: str, start: int, last_ms: int, by: str) -> int:
        if last_ms <= start:
            raise SearchCapError(
                400,
                f"more than {self.search_cap} HubSpot {object_type} have {by} {start}: "
                "a search cannot page through them",
            )
        return last_ms

    def search_with_contacts(
        self,
        object_type: str,
        properties: Sequence[str],
        from_ms: int,
        until_ms: int,
        by: str = TIME_PROPERTY,
        ahead: int = AHEAD,
        batch: int = ASSOCIATION_BATCH_LIMIT,
        keyset: bool = False,
    ) -> Iterator[tuple[SearchPage, dict[str, list[str]]]]:
        """`search_window`'s pages, in order, each with {record id: contact ids}.

        Consecutive pages share one association read of up to `batch` ids (five pages of 200):
        a read per page made the portal budget a second bottleneck beside the search budget.
        Each group's read runs in the background while the next searches are sent; at most
        `ahead` groups wait for theirs. Pages come out in search order, so a caller moving a
        cursor after each one moves it as without the overlap. `keyset`: as `search_window`'s.
        """
        pending: deque[tuple[list[SearchPage], Background[dict[str, list[str]]]]] = deque()
        group: list[SearchPage] = []

        def read(pages: list[SearchPage]) -> None:
            ids = [str(r["id"]) for page in pages for r in page.records]
            pending.append((pages, Background(partial(self.contacts_of, object_type, ids))))

        def ready(finished: bool) -> Iterator[tuple[SearchPage, dict[str, list[str]]]]:
            while pending and (finished or len(pending) > ahead or pending[0][1].done()):
                pages, job = pending.popleft()
                contacts = job.result()
                for page in pages:
                    yield page, {str(r["id"]): contacts[str(r["id"])] for r in page.records}

        for page in self.search_window(object_type, properties, from_ms, until_ms, by, keyset):
            group.append(page)
            if sum(len(p.records) for p in group) + SEARCH_PAGE > batch:
                read(group)
                group = []
            yield from ready(False)
        if group:
            read(group)
        yield from ready(True)

    def contacts_of(self, object_type: str, ids: Sequence[str]) -> dict[str, list[str]]:
        """{record id: associated contact ids} (v4 associations, batch read)."""
        if not ids:
            return {}
        found = self.client.batch_associated_ids(object_type, list(ids), "contacts")
        return {i: sorted(set(found.get(i, []))) for i in ids}


class Background(Generic[T]):
    """`fn()` on a daemon thread; `result()` waits for it and returns its value or raises what it raised.

    A daemon thread, not an executor's: a Ctrl-C must not wait for a read that is itself waiting
    on the rate limit or backing off (the reads left behind are re-done on resume).
    """

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="backfill-read", daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller of result, which raises it)
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error


def _ms(record: dict[str, Any], by: str = TIME_PROPERTY) -> int | None:
    return epoch_ms(str((record.get("properties") or {}).get(by) or ""))


def search_limiter(connection: redis.Redis, rate: tuple[int, float] = SEARCH_RATE) -> RateLimiter:
    """The portal-wide budget of search requests, shared through Redis like the portal's own."""
    return RateLimiter(connection, rate[0], rate[1], key=SEARCH_KEY, margin_s=SEARCH_MARGIN_S)
