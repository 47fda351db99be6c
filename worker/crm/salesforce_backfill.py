"""The reads `pruner backfill salesforce` makes: SOQL over the REST API, windowed on `SystemModstamp`.

(Objects with many records are read by Bulk API 2.0 query jobs instead, worker/crm/salesforce_bulk.py,
over the same window, columns and in-window filter, defined here; `count` decides, `--bulk auto`.)

Every request goes through the `SalesforceClient` the workers use (the org's request budget
shared through Redis, the retry policy of worker/crm/http.py). Nothing here retries by itself.

- `GET sobjects/{type}/describe`: the fields the org has. The mapping's custom fields
  (`Pruner_Reopened__c`, …) exist only where an admin created them, and a SOQL query naming a
  field the org lacks is refused whole; an object the org lacks (Individual, without data
  privacy enabled) answers 404.
- `GET query?q=SELECT … FROM {type} WHERE SystemModstamp >= … AND SystemModstamp < … ORDER BY
  SystemModstamp ASC`, then `nextRecordsUrl` until `done`, up to 2,000 records a page
  (`Sforce-Query-Options: batchSize`). Tasks and Events go through `queryAll` with `IsDeleted =
  false`: Salesforce archives activities after a year, and only `queryAll` returns archived
  ones; a deleted activity was taken back by the org, so it stays out.
- SOQL dateTime literals have whole seconds: the window's edges are widened to the second and
  the records outside the exact window dropped here. `SystemModstamp` moves on every change,
  is indexed, and orders the reading, so a stopped run can restart a new query where it got
  to (`from_ms`, skipping the ids already read at that very time) instead of relying on a
  query locator, which Salesforce expires.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rules.salesforce_map import record_time_ms
from worker.crm.http import body_of
from worker.crm.salesforce_client import SalesforceClient, SalesforceQueryError, describe, errors_of

TIME_FIELD = "SystemModstamp"
QUERY_BATCH = 2000  # records a query page holds at most (Salesforce's default and maximum)
ARCHIVED_TYPES = frozenset({"Task", "Event"})  # read with queryAll: archived activities too


@dataclass
class QueryPage:
    """Records of one page inside the window, where a new query would continue, records still to come."""

    records: list[dict[str, Any]]
    resume: dict[str, Any]  # {"from_ms": epoch ms or None, "seen": ids already read at from_ms}
    left: int | None


def soql_time(ms: int) -> str:
    """A SOQL dateTime literal (unquoted, whole seconds, UTC)."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_where(sobject: str, from_ms: int | None, until_ms: int) -> str:
    """The WHERE conditions of one object type's window: `from_ms` (None: no lower edge) to `until_ms`."""
    where = []
    if from_ms is not None:
        where.append(f"{TIME_FIELD} >= {soql_time(from_ms)}")  # floored to the second: rows before from_ms dropped
    where.append(f"{TIME_FIELD} < {soql_time(until_ms + 999)}")  # ceiled to the second
    if sobject in ARCHIVED_TYPES:
        where.append("IsDeleted = false")
    return " AND ".join(where)


def query_columns(fields: Sequence[str]) -> list[str]:
    """The columns a window query selects: the fields asked for, and the time the window is on."""
    return list(dict.fromkeys([*fields, TIME_FIELD]))


def window_query(sobject: str, fields: Sequence[str], from_ms: int | None, until_ms: int, ordered: bool = True) -> str:
    """The SOQL of one object type's window, oldest change first unless `ordered` is False (Bulk API 2.0)."""
    soql = f"SELECT {', '.join(query_columns(fields))} FROM {sobject} WHERE {window_where(sobject, from_ms, until_ms)}"
    return f"{soql} ORDER BY {TIME_FIELD} ASC" if ordered else soql


def in_window(stamp: int | None, record_id: str, from_ms: int | None, until_ms: int, seen: Container[str]) -> bool:
    """Whether a record changed at `stamp` belongs to the exact window (the query's edges are whole seconds).

    `seen`: ids already read at `from_ms` by a run that stopped there, not given again.
    """
    if stamp is None or stamp >= until_ms or (from_ms is not None and stamp < from_ms):
        return False
    return not (stamp == from_ms and record_id in seen)


class SalesforceHistory:
    """The reads a Salesforce backfill makes, over the API client every worker uses."""

    def __init__(self, client: SalesforceClient, batch_size: int = QUERY_BATCH) -> None:
        self.client = client
        self.batch_size = batch_size

    def describe(self, sobject: str) -> set[str] | None:
        """The names of `sobject`'s fields in this org; None when the org has no such object."""
        response = self.client.request("GET", f"sobjects/{sobject}/describe")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise SalesforceQueryError(f"Salesforce refused to describe {sobject}: {describe(response)}")
        fields = body_of(response).get("fields") or []
        return {str(f["name"]) for f in fields if isinstance(f, dict) and f.get("name")}

    def count(self, sobject: str, from_ms: int | None, until_ms: int) -> int:
        """How many `sobject` records a window read would return (`SELECT COUNT()`: one request, no records).

        COUNT() answers in `totalSize` with no records (SOQL reference, "COUNT() and
        COUNT(fieldName)"), and cannot be combined with ORDER BY, so the window has none.
        """
        resource = "queryAll" if sobject in ARCHIVED_TYPES else "query"
        soql = f"SELECT COUNT() FROM {sobject} WHERE {window_where(sobject, from_ms, until_ms)}"
        response = self.client.request("GET", resource, params={"q": soql})
        if response.status_code != 200:
            raise SalesforceQueryError(f"Salesforce refused to count {sobject}: {describe(response)}")
        total = body_of(response).get("totalSize")
        return total if isinstance(total, int) else 0

    def read(
        self, sobject: str, fields: Sequence[str], from_ms: int | None, until_ms: int, seen: Iterable[str] = ()
    ) -> Iterator[QueryPage]:
        """Every `sobject` record with `from_ms` <= SystemModstamp < `until_ms`, a page at a time, oldest first.

        `seen`: ids already read at `from_ms` (a resumed run), not given again.
        """
        resource = "queryAll" if sobject in ARCHIVED_TYPES else "query"
        soql = window_query(sobject, fields, from_ms, until_ms)
        headers = {"Sforce-Query-Options": f"batchSize={self.batch_size}"}
        response = self.client.request("GET", resource, params={"q": soql}, headers=headers)
        skip = set(seen)
        last_ms, at_last = from_ms, set(skip)
        read = 0
        while True:
            if response.status_code != 200:
                raise SalesforceQueryError(f"Salesforce refused to read {sobject}: {describe(response)}")
            body = body_of(response)
            records = [r for r in body.get("records") or [] if isinstance(r, dict) and r.get("Id")]
            read += len(records)
            fresh = []
            for record in records:
                stamp = record_time_ms(record.get(TIME_FIELD))
                if stamp is None or not in_window(stamp, str(record["Id"]), from_ms, until_ms, skip):
                    continue
                if last_ms is None or stamp > last_ms:
                    last_ms, at_last = stamp, set()
                at_last.add(str(record["Id"]))
                fresh.append(record)
            total = body.get("totalSize")
            next_url = body.get("nextRecordsUrl")
            done = bool(body.get("done", True)) or not next_url
            left = max(0, total - read) if isinstance(total, int) and not done else 0 if done else None
            yield QueryPage(fresh, {"from_ms": last_ms, "seen": sorted(at_last)}, left)
            if done:
                return
            response = self.client.request("GET", f"{self.client.instance_url}{next_url}", headers=headers)
            if response.status_code == 400 and "INVALID_QUERY_LOCATOR" in {
                e.get("errorCode") for e in errors_of(response)
            }:
                # The locator expired (a long wait on the rate limit): a new query from where this one got to.
                yield from self.read(sobject, fields, last_ms, until_ms, at_last)
                return
