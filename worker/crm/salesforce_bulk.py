"""The backfill's reads through Salesforce's Bulk API 2.0 query jobs, for objects with many records.

The REST reader (worker/crm/salesforce_backfill.py) costs one request per 2,000 records and
holds a query cursor open between pages; Salesforce designed Bulk API 2.0 query jobs for large
result sets (its guide: queries returning 2,000 records or more, 10,000 in older versions). The
same window, fields and in-window filter, the same record values (as text), the same mapping.

Checked against Salesforce's "Bulk API 2.0 and Bulk API Developer Guide" (the Bulk API 2.0 Query
chapter: Create a Query Job, Get Information About a Query Job, Get Results for a Query Job,
Job States, Limits), API 47.0 and later:

- `POST /services/data/vXX.X/jobs/query` with JSON `{"operation": "query" | "queryAll",
  "query": SOQL, "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"}` (the
  last three are the defaults, sent so the parser's assumptions are explicit). The answer is the
  job's info: `id` and `state` (`UploadComplete`). `queryAll` also returns archived and deleted
  Tasks and Events, as the REST reader's `queryAll` does. Not supported in a job: GROUP BY,
  OFFSET, TYPEOF, aggregate functions such as COUNT(); ORDER BY and LIMIT are listed as
  unsupported in newer versions (they disable PK chunking), so the job's SOQL has no ORDER BY
  and the records come in no particular order.
- `GET …/jobs/query/{id}`: `state` goes UploadComplete -> InProgress -> JobComplete, or ends
  `Failed` (with `errorMessage`) or `Aborted`; `numberRecordsProcessed` counts the results.
- `GET …/jobs/query/{id}/results?maxRecords=N[&locator=L]` (only once JobComplete; the same API
  version as the job, else 409): CSV, one set of at most N records, the headers
  `Sforce-NumberOfRecords` (records in this set) and `Sforce-Locator` (the next set; the string
  `null` after the last). A locator does not change while the job exists and can be read again:
  that is what makes a stopped run resumable without losing or repeating a set.
- Limits: 10,000 query jobs per rolling 24 h (`DailyBulkV2QueryJobs` in /limits); a job in a
  terminal state is deleted after 7 days. Every call above is an ordinary API request: it counts
  against the org's daily requests like the REST reads.

Every call goes through the workers' `SalesforceClient` (the Redis rate budget, the retry policy,
the call metrics), not simple-salesforce's `bulk2` handler: that one sends through its own
`requests` session, outside the shared budget and retries, and keeps no locator a later run can
continue from. A create retried after an answer lost in transit can leave an extra job behind;
it costs one of the day's 10,000 jobs and nothing else (it is never read).

Resuming: right after a job is created, an empty page carries its id, so the cursor names the job
before any result is read and a stopped run never creates a second one; after each set, the
cursor holds the locator of the next. A continued run asks for the job again: still there and
not failed, it polls it and reads on from the locator; deleted (older than 7 days), failed or
aborted, it starts a new job over the same window (records already sent are sent again, under
the same event ids: they count once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from rules.salesforce_history import csv_records
from rules.salesforce_map import record_time_ms
from worker.crm.http import body_of
from worker.crm.salesforce_backfill import (
    ARCHIVED_TYPES,
    TIME_FIELD,
    QueryPage,
    in_window,
    query_columns,
    window_query,
)
from worker.crm.salesforce_client import SalesforceClient, SalesforceQueryError, describe
from worker.logs import redact

log = logging.getLogger(__name__)

RESULTS_PAGE = 10_000  # records asked for per result set (maxRecords): one sink commit each
COMPLETE, FAILED, ABORTED = "JobComplete", "Failed", "Aborted"
POLL_FIRST_S, POLL_MAX_S = 1.0, 30.0  # the wait between status reads: 1 s, doubling up to 30 s
MAX_WAIT_S = 3600.0  # a job still running after this stops the run; the same command waits on


class SalesforceBulkJobError(SalesforceQueryError):
    """A Bulk API 2.0 query job failed or was aborted, or did not finish in time."""


class BulkHistory:
    """Window reads as Bulk API 2.0 query jobs, over the API client every worker uses."""

    def __init__(
        self,
        client: SalesforceClient,
        page_records: int = RESULTS_PAGE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        self.client = client
        self.page_records = page_records
        self.sleep = sleep
        self.clock = clock
        self.max_wait_s = max_wait_s

    def read(
        self,
        sobject: str,
        fields: Sequence[str],
        from_ms: int | None,
        until_ms: int,
        seen: Iterable[str] = (),
        job: dict[str, Any] | None = None,
    ) -> Iterator[QueryPage]:
        """Every `sobject` record with `from_ms` <= SystemModstamp < `until_ms`, a result set at a time.

        `job`: a cursor's `{"id", "locator", "read", "columns"}` to continue that job; `seen`: ids
        already read at `from_ms` by a REST read that stopped there (kept in each page's cursor, not
        given again).
        """
        skip = sorted(set(seen))
        info = self._existing(job) if job else None
        if info is None or job is None:
            info = self._create(sobject, window_query(sobject, fields, from_ms, until_ms, ordered=False))
            # The job's columns go in the cursor: a continued run reads its results by them, even if
            # the org's fields (and so the run's query) have changed since.
            job = {"id": info["id"], "locator": None, "read": 0, "columns": query_columns(fields)}
            # The job is in the cursor before anything is read: a stop now never costs a second job.
            yield QueryPage([], {"from_ms": from_ms, "seen": skip, "bulk": dict(job)}, None)
        columns = list(job.get("columns") or query_columns(fields))
        total = self._wait(str(job["id"]), info)
        locator, read = job.get("locator"), int(job.get("read") or 0)
        while True:
            records, locator = self._results(str(job["id"]), locator, columns)
            read += len(records)
            # The job's SOQL window has whole-second edges, as the REST reader's: the exact window here.
            fresh = [r for r in records if in_window(record_time_ms(r.get(TIME_FIELD)), str(r.get("Id")), from_ms,
                                                     until_ms, skip)]  # fmt: skip
            done = locator is None
            cursor = {"from_ms": from_ms, "seen": skip, "bulk": {**job, "locator": locator, "read": read}}
            yield QueryPage(fresh, cursor, 0 if done else max(0, total - read))
            if done:
                return

    # -- the three resources -----------------------------------------------------------

    def _create(self, sobject: str, soql: str) -> dict[str, Any]:
        body = {
            "operation": "queryAll" if sobject in ARCHIVED_TYPES else "query",
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        response = self.client.request("POST", "jobs/query", json=body)
        info = body_of(response)
        if response.status_code not in (200, 201) or not info.get("id"):
            # 404: no such resource before API 47.0, the first with Bulk API 2.0 query jobs.
            hint = " (query jobs need SALESFORCE_API_VERSION 47.0 or later; or --bulk never)" \
                if response.status_code == 404 else ""  # fmt: skip
            raise SalesforceQueryError(
                f"Salesforce refused a Bulk API query job on {sobject}: {describe(response)}{hint}"
            )
        log.info("salesforce bulk query job created for %s", sobject)
        return info

    def _info(self, job_id: str) -> tuple[int, dict[str, Any]]:
        response = self.client.request("GET", f"jobs/query/{job_id}")
        return response.status_code, body_of(response) if response.status_code == 200 else {}

    def _existing(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """A cursor's job, if it can still be read; None when it must be made again."""
        status, info = self._info(str(job.get("id")))
        if status == 404 or info.get("state") in (FAILED, ABORTED):
            # Deleted (terminal jobs go after 7 days), failed or aborted: a new job over the same window.
            log.info("salesforce bulk query job of the cursor is %s; starting a new one", info.get("state") or "gone")
            return None
        if status != 200:
            raise SalesforceQueryError(f"Salesforce refused to describe a Bulk API query job: HTTP {status}")
        return info

    def _wait(self, job_id: str, info: dict[str, Any]) -> int:
        """Poll until the job is JobComplete; return its record count. Failed or Aborted: raise."""
        # The first status read is at once (a small job is often done by then), then 1 s, 2 s, 4 s … 30 s.
        started, pause = self.clock(), 0.0
        while True:
            state = info.get("state")
            if state == COMPLETE:
                processed = info.get("numberRecordsProcessed")
                return processed if isinstance(processed, int) else 0
            if state in (FAILED, ABORTED):
                # errorMessage says why (a field, a timeout): Salesforce's words, no record data.
                why = redact(str(info.get("errorMessage") or "no errorMessage"))[:300]
                raise SalesforceBulkJobError(
                    f"the Bulk API query job {job_id} ended {state}: {why}; the next run starts a new job"
                )
            if self.clock() - started > self.max_wait_s:
                raise SalesforceBulkJobError(
                    f"the Bulk API query job {job_id} is still {state} after {self.max_wait_s:.0f} s; "
                    "run the same command again to wait on"
                )
            if pause:
                self.sleep(pause)
            pause = min(POLL_MAX_S, pause * 2) if pause else POLL_FIRST_S
            status, info = self._info(job_id)
            if status != 200:
                raise SalesforceQueryError(f"Salesforce refused to describe a Bulk API query job: HTTP {status}")

    def _results(
        self, job_id: str, locator: str | None, columns: Sequence[str]
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One result set: its records, and the locator of the next (None after the last)."""
        params: dict[str, Any] = {"maxRecords": self.page_records}
        if locator:
            params["locator"] = locator
        response = self.client.request(
            "GET", f"jobs/query/{job_id}/results", params=params, headers={"Accept": "text/csv"}
        )
        if response.status_code != 200:
            raise SalesforceQueryError(f"Salesforce refused a Bulk API query job's results: {describe(response)}")
        try:
            records = csv_records(response.content.decode("utf-8"), columns)
        except (ValueError, UnicodeDecodeError) as exc:  # csv.Error is a ValueError too
            raise SalesforceQueryError(f"a Bulk API result set could not be read: {exc}") from None
        expected = response.headers.get("Sforce-NumberOfRecords")
        if expected is not None and expected.strip().isdigit() and int(expected) != len(records):
            # A set cut short in transit would otherwise pass for a whole one, and its locator move on.
            raise SalesforceQueryError(
                f"a Bulk API result set held {len(records)} records where Sforce-NumberOfRecords said {expected}"
            )
        following = (response.headers.get("Sforce-Locator") or "").strip()
        return records, None if following in ("", "null") else following
