"""The fake org's Bulk API 2.0 query jobs (`/services/data/v{version}/jobs/query…`), for tests/fakes/salesforce.py.

Follows Salesforce's Bulk API 2.0 Query reference (Create a Query Job, Get Information About a
Query Job, Get Results for a Query Job, Abort, Delete, Job States):

- `POST jobs/query` `{"operation": "query"|"queryAll", "query": SOQL, …}` runs the SOQL subset of
  the fake's REST `query`/`queryAll` (same records, recycle bin and archived activities) and
  answers the job's info, state `UploadComplete`. Refused, as the guide lists them: COUNT() and
  other aggregates, GROUP BY, OFFSET, TYPEOF, and ORDER BY and LIMIT (newer guides list both as
  unsupported); a SOQL error of the REST subset answers as it does there (400, its errorCode).
  The code the fake gives a refused job request, `INVALIDJOB`, is its own choice: the guide
  documents the refusal, not the code.
- `GET jobs/query/{id}`: the info; the state is `InProgress` for the first `bulk_polls` reads
  (config, default 0), then `JobComplete` with `numberRecordsProcessed`, or `Failed` with an
  `errorMessage` for the next `bulk_fail_next` jobs created.
- `GET jobs/query/{id}/results?maxRecords=N&locator=L`: CSV (header row, every value quoted as in
  the guide's example, LF), at most min(N, `bulk_page_size`) records a set, with
  `Sforce-NumberOfRecords` and `Sforce-Locator` (the string `null` after the last set). A locator
  is the base64 of the set's offset (Salesforce's look like `MTAwMDA`): stable, readable again
  while the job exists. Another API version than the job's answers 409, as documented; a job not
  JobComplete answers 400 (the fake's choice of code, `INVALIDJOBSTATE`).
- `PATCH jobs/query/{id}` `{"state": "Aborted"}` aborts; `DELETE jobs/query/{id}` deletes (204), as
  Salesforce does with a terminal job after 7 days: its info and results are then 404.

Values in the CSV are written the way the REST API's JSON reads, as text: booleans `true`/`false`,
numbers as JSON writes them, null as an empty cell, dateTimes in the `…000Z` form. Every request is
an API call like any other: the failure injection (`limit_next`, `error_next`, …) and the usage
count in `Sforce-Limit-Info` apply to them as to the REST resources.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
import json
import re
from typing import TYPE_CHECKING, Any

from flask import Response, jsonify, request

from tests.fakes.salesforce import SoqlError, _error

if TYPE_CHECKING:
    from tests.fakes.salesforce import FakeSalesforce

_UNSUPPORTED = re.compile(
    r"\b(?:COUNT|SUM|AVG|MIN|MAX)\s*\(|\b(?:GROUP\s+BY|OFFSET|TYPEOF|ORDER\s+BY|LIMIT)\b", re.IGNORECASE
)
_HEAD = re.compile(r"\s*SELECT\s+(.+?)\s+FROM\s+(\w+)", re.IGNORECASE | re.DOTALL)
_REST_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3})\+0000")


class BulkJobs:
    """Query jobs of one fake org; called with the org's lock held."""

    def __init__(self, org: FakeSalesforce) -> None:
        self.org = org
        self.jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def reset(self) -> None:
        self.jobs.clear()

    def handle(self, method: str, parts: list[str], body: Any, version: str) -> tuple[Response, int]:
        """`parts`: the path after `jobs/query`; `version`: `v59.0`."""
        if not parts and method == "POST":
            return self._create(body, version)
        job = self.jobs.get(parts[0]) if parts else None
        if job is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if len(parts) == 2 and parts[1] == "results" and method == "GET":
            return self._results(job, version)
        if len(parts) == 1 and method == "GET":
            return self._advance(job)
        if len(parts) == 1 and method == "PATCH" and isinstance(body, dict) and body.get("state") == "Aborted":
            job["info"]["state"] = "Aborted"
            return jsonify(job["info"]), 200
        if len(parts) == 1 and method == "DELETE":
            del self.jobs[parts[0]]
            return Response(status=204), 204
        return _error(404, "NOT_FOUND", "The requested resource does not exist")

    def _create(self, body: Any, version: str) -> tuple[Response, int]:
        if not isinstance(body, dict) or body.get("operation") not in ("query", "queryAll") or not body.get("query"):
            return _error(400, "INVALIDJOB", "a query job needs operation query or queryAll and a query")
        soql = str(body["query"])
        if _UNSUPPORTED.search(soql):
            return _error(400, "INVALIDJOB", "this SOQL is not supported by Bulk API 2.0 query jobs")
        try:
            rows = self.org.query(soql, all_rows=body["operation"] == "queryAll")
        except SoqlError as exc:
            return _error(400, exc.code, str(exc))
        head = _HEAD.match(soql)
        if head is None:
            return _error(400, "MALFORMED_QUERY", "SELECT … FROM … expected")
        columns = [f.strip() for f in head.group(1).split(",")]
        cfg = self.org.config
        fails = cfg["bulk_fail_next"] > 0
        cfg["bulk_fail_next"] = max(0, cfg["bulk_fail_next"] - 1)
        job_id = f"750{next(self._ids):015d}"
        info = {
            "id": job_id,
            "operation": body["operation"],
            "object": head.group(2),
            "createdById": "005000000000APIAAA",
            "createdDate": "2026-01-01T00:00:00.000+0000",
            "systemModstamp": "2026-01-01T00:00:00.000+0000",
            "state": "UploadComplete",
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(version.lstrip("v")),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }
        self.jobs[job_id] = {"info": info, "rows": rows, "columns": columns, "polls": cfg["bulk_polls"],
                             "fails": fails, "version": version}  # fmt: skip
        return jsonify(info), 200

    def _advance(self, job: dict[str, Any]) -> tuple[Response, int]:
        info = job["info"]
        if info["state"] in ("UploadComplete", "InProgress"):
            if job["polls"] > 0:
                job["polls"] -= 1
                info["state"] = "InProgress"
            elif job["fails"]:
                info.update(state="Failed", errorMessage="InvalidBatch : injected failure of the query job")
            else:
                info.update(state="JobComplete", numberRecordsProcessed=len(job["rows"]), retries=0,
                            totalProcessingTime=40)  # fmt: skip
        return jsonify(info), 200

    def _results(self, job: dict[str, Any], version: str) -> tuple[Response, int]:
        if version != job["version"]:
            return _error(409, "INVALIDJOBSTATE", "use the API version the job was created with")
        if job["info"]["state"] != "JobComplete":
            return _error(400, "INVALIDJOBSTATE", f"the job is {job['info']['state']}")
        locator = request.args.get("locator")
        try:
            offset = int(base64.b64decode(locator + "=" * (-len(locator) % 4)).decode()) if locator else 0
        except (ValueError, binascii.Error):
            return _error(400, "INVALIDLOCATOR", "invalid locator")
        try:
            asked = int(request.args.get("maxRecords") or self.org.config["bulk_page_size"])
        except ValueError:
            return _error(400, "INVALIDPARAMETER", "maxRecords must be a number")
        size = max(1, min(asked, int(self.org.config["bulk_page_size"])))
        page = job["rows"][offset : offset + size]
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(job["columns"])
        for row in page:
            writer.writerow([_cell(row.get(name)) for name in job["columns"]])
        following = offset + size
        response = Response(out.getvalue(), mimetype="text/csv")
        response.headers["Sforce-NumberOfRecords"] = str(len(page))
        more = following < len(job["rows"])
        response.headers["Sforce-Locator"] = base64.b64encode(str(following).encode()).decode().rstrip("=") if more \
            else "null"  # fmt: skip
        return response, 200


def _cell(value: Any) -> str:
    """A stored value as a Bulk API CSV cell: the REST JSON's value, as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _REST_TIME.sub(r"\1Z", value) if _REST_TIME.fullmatch(value) else value
    return json.dumps(value)
