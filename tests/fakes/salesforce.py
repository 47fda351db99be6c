"""A fake Salesforce REST API for tests: records in memory, calls recorded, failures on demand.

`outbound_message` builds the SOAP Outbound Message Salesforce POSTs to Pruner.

In a test process: `fake = FakeSalesforce(); url = fake.start()` (a werkzeug server in a
thread), `fake.add("Lead", {...})`, `fake.records`, `fake.calls`, `fake.configure(...)`,
`fake.stop()`. From another process: `python -m tests.fakes.salesforce --port N` and the
control routes `POST /_fake/reset`, `GET /_fake/calls`, `GET|POST /_fake/config`,
`GET|POST /_fake/records`.

Under `/services/data/v{version}/` it serves what the Pruner adapter uses:
`sobjects/{type}` POST, `sobjects/{type}/describe` GET (the type's standard fields, Pruner's
custom fields and any field a stored record has, less `missing_fields`),
`sobjects/{type}/{id}` GET/PATCH/DELETE, `composite/sobjects` PATCH/POST (≤ 200 records,
`allOrNone`), `query?q=` and `queryAll?q=` with a small SOQL subset (`SELECT f, … FROM T
[WHERE cond AND …] [ORDER BY f [ASC]] [LIMIT n]`, conditions `=`, `!=`, `IN (…)`, `LIKE '…%'`,
and `>=`, `>`, `<=`, `<` against unquoted dateTime literals such as `2026-09-01T00:00:00Z`;
anything else is 400 `MALFORMED_QUERY`). Answers are pages of at most `page_size` records
(and of `batchSize` in `Sforce-Query-Options`, 200 to 2,000) with `totalSize`, `done` and
`nextRecordsUrl`. `query` hides deleted records and archived activities (a Task or Event with
`IsArchived` true); `queryAll` returns them, deleted ones with `IsDeleted` true. `SELECT COUNT()
FROM …` answers `totalSize` and no records (not with ORDER BY). Bulk API 2.0 query jobs
(`jobs/query…`) are tests/fakes/salesforce_bulk.py (`bulk_polls`, `bulk_fail_next`,
`bulk_page_size` in `configure`). Types in
`absent_sobjects` do not exist in the org (404 to describe, `INVALID_TYPE` to a query).
Every API call needs the Bearer token (401 `INVALID_SESSION_ID` otherwise) and answers
`Sforce-Limit-Info`.

A record added without `LastModifiedDate` gets the current time; `SystemModstamp` follows
`LastModifiedDate` unless given, and both move on every update.

Failure injection (`configure`): `limit_next` / `limit_rate` → 403 `REQUEST_LIMIT_EXCEEDED`;
`error_next` / `error_rate` → `error_status` (500); `error_after_write_next` → the next N
POST/PATCH are carried out and then answered 500 (a lost answer); `retry_after` adds that header;
`fail_records` = {record id or WhoId: {"code": …, "times": n (-1 = always)}} refuses those
records; `missing_fields` = [names] answer `INVALID_FIELD` like an org without them.

A Task created without `OwnerId` is owned by the API user (`API_USER_ID`), and one naming a
non-user owner (a queue, `00G…`) is refused, as Salesforce does.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import re
import threading
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from rules.salesforce_ids import to_18

PREFIXES = {"Lead": "00Q", "Opportunity": "006", "Task": "00T", "Individual": "0PK", "Event": "00U", "Contact": "003"}
QUOTE = '"'
API_USER_ID = "005000000000API"  # the integration user the token belongs to: owner of what it creates unassigned
CLOSED_STAGES = {"Closed Won", "Closed Lost"}
DEFAULT_CONFIG: dict[str, Any] = {
    "limit_next": 0,
    "limit_rate": 0.0,
    "error_next": 0,
    "error_rate": 0.0,
    "error_status": 500,
    "error_after_write_next": 0,
    "retry_after": None,
    "fail_records": {},
    "missing_fields": [],
    "absent_sobjects": [],
    "page_size": 2000,
    "api_limit": 15000,
    "bulk_polls": 0,
    "bulk_fail_next": 0,
    "bulk_page_size": 10000,
}
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|>=|<=|=|>|<|\(|\)|,)|(?P<word>[A-Za-z0-9_.:%-]+))")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})")
_COMPARISONS = (">=", ">", "<=", "<")
_COUNT = re.compile(r"^\s*SELECT\s+COUNT\(\)\s+FROM", re.IGNORECASE)
# What describe lists besides the fields of stored records: the standard fields the mapping reads,
# and Pruner's custom fields (an org where the admin created them; `missing_fields` removes some).
_AUDIT = ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted"]
DESCRIBED: dict[str, list[str]] = {
    "Lead": [*_AUDIT, "OwnerId", "Status", "HasOptedOutOfEmail", "DoNotCall", "LeadSource", "Industry", "Rating",
             "Email", "IsConverted", "Pruner_Reopened__c"],
    "Task": [*_AUDIT, "WhoId", "OwnerId", "IsClosed", "Status", "TaskSubtype", "CompletedDateTime", "ActivityDate",
             "Subject", "CallType", "CallDisposition", "CallDurationInSeconds", "IsArchived", "Pruner_Inbound__c"],
    "Event": [*_AUDIT, "WhoId", "StartDateTime", "EndDateTime", "IsArchived", "Pruner_Rescheduled__c",
              "Pruner_First_Meeting__c", "Pruner_Cancelled__c", "Pruner_No_Show__c"],
    "Opportunity": [*_AUDIT, "StageName", "IsWon", "IsClosed", "Amount", "Pruner_Lead_Id__c"],
    "Individual": [*_AUDIT, "ShouldForget", "HasOptedOutSolicit", "Pruner_Lead_Id__c"],
}  # fmt: skip
_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<obj>\w+)(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+ASC)?)?(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)


class _QuietHandler(WSGIRequestHandler):
    """No access log: test output stays readable."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify([{"message": message, "errorCode": code, "fields": []}]), status


class SoqlError(Exception):
    """The query is outside the subset this fake understands, or names a missing field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeSalesforce:
    """In-memory Salesforce org behind a werkzeug server; thread-safe."""

    def __init__(self, token: str = "fake-sf-token", seed: int = 7) -> None:
        self.token = token
        self.lock = threading.RLock()
        self.random = random.Random(seed)
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.deleted: dict[str, dict[str, dict[str, Any]]] = {}  # the recycle bin: what queryAll still sees
        self.calls: list[dict[str, Any]] = []
        self.config: dict[str, Any] = copy.deepcopy(DEFAULT_CONFIG)
        self.api_usage = 0
        self._ids = itertools.count(1)
        self._pages: dict[str, list[dict[str, Any]]] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        # Imported here: the bulk module uses this one's SOQL subset and errors.
        from tests.fakes.salesforce_bulk import BulkJobs

        self.bulk = BulkJobs(self)
        self.app = self._build_app()

    # -- test-side helpers -------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread; return the instance URL."""
        self._server = make_server(host, port, self.app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://{host}:{self._server.server_port}"

    def stop(self) -> None:
        """Stop the server thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        """Forget records, calls and injected failures."""
        with self.lock:
            self.records.clear()
            self.deleted.clear()
            self.calls.clear()
            self.config = copy.deepcopy(DEFAULT_CONFIG)
            self._pages.clear()
            self.bulk.reset()
            self.api_usage = 0

    def configure(self, **settings: Any) -> None:
        """Change failure injection and paging (see the module docstring)."""
        with self.lock:
            unknown = set(settings) - set(DEFAULT_CONFIG)
            if unknown:
                raise KeyError(f"unknown fake settings {sorted(unknown)}")
            self.config.update(copy.deepcopy(settings))

    def new_id(self, sobject: str) -> str:
        """Return a fresh 18-character id with the type's key prefix."""
        prefix = PREFIXES.get(sobject, "a00")
        return to_18(f"{prefix}{next(self._ids):012d}"[:15])

    def add(self, sobject: str, fields: dict[str, Any], record_id: str | None = None) -> str:
        """Store a record as if it existed in the org; return its 18-character id."""
        with self.lock:
            record_id = to_18(record_id) if record_id else self.new_id(sobject)
            stamp = _now()
            record = {"CreatedDate": stamp, "LastModifiedDate": stamp, **fields, "Id": record_id}
            record.setdefault("SystemModstamp", record["LastModifiedDate"])
            self.records.setdefault(sobject, {})[record_id] = record
            return record_id

    def get(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        """Return a copy of a record, or None."""
        with self.lock:
            record = self.records.get(sobject, {}).get(to_18(record_id))
            return dict(record) if record is not None else None

    def find(self, sobject: str, **match: Any) -> list[dict[str, Any]]:
        """Return copies of the records of `sobject` whose fields equal `match`."""
        with self.lock:
            return [
                dict(r) for r in self.records.get(sobject, {}).values() if all(r.get(k) == v for k, v in match.items())
            ]

    def api_calls(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """Recorded API calls, optionally filtered by method and path prefix."""
        with self.lock:
            return [
                c
                for c in self.calls
                if (method is None or c["method"] == method) and (path is None or c["path"].startswith(path))
            ]

    # -- the org -----------------------------------------------------------------------

    def _computed(self, sobject: str, record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        if sobject == "Opportunity" and "StageName" in out:
            out["IsClosed"] = out["StageName"] in CLOSED_STAGES
        if sobject == "Task":
            out["IsClosed"] = out.get("Status") == "Completed"
        return out

    def _refusal(self, record_id: str | None, fields: dict[str, Any]) -> dict[str, Any] | None:
        """A per-record error to answer for this record, if one is configured."""
        missing = [f for f in fields if f in self.config["missing_fields"]]
        if missing:
            return {"statusCode": "INVALID_FIELD", "message": f"No such column '{missing[0]}'", "fields": missing}
        for key in (record_id, fields.get("WhoId")):
            rule = self.config["fail_records"].get(to_18(key)) if isinstance(key, str) else None
            if rule and rule.get("times", 1) != 0:
                if rule.get("times", 1) > 0:
                    rule["times"] -= 1
                code = rule.get("code", "UNABLE_TO_LOCK_ROW")
                return {"statusCode": code, "message": f"injected {code}", "fields": []}
        return None

    def _update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        record_id = to_18(record_id)
        refusal = self._refusal(record_id, fields)
        if refusal is None and record_id not in self.records.get(sobject, {}):
            refusal = {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}
        if refusal is not None:
            return {"id": record_id, "success": False, "errors": [refusal]}
        record = self.records[sobject][record_id]
        record.update(fields)
        record["LastModifiedDate"] = record["SystemModstamp"] = _now()
        return {"id": record_id, "success": True, "errors": []}

    def _create(self, sobject: str, fields: dict[str, Any]) -> dict[str, Any]:
        refusal = self._refusal(None, fields)
        if refusal is not None:
            return {"success": False, "errors": [refusal]}
        if "Id" in fields or "id" in fields:
            message = "cannot specify Id in an insert call"
            return {"success": False, "errors": [{"statusCode": "INVALID_FIELD", "message": message, "fields": ["Id"]}]}
        if sobject == "Task":
            # As Salesforce does: a Task without OwnerId belongs to the API user; only a user may own one.
            fields = {"OwnerId": API_USER_ID, **fields}
            if not str(fields["OwnerId"]).startswith("005"):
                message = "Owner ID: id value of incorrect type"
                return {"success": False, "errors": [{"statusCode": "FIELD_INTEGRITY_EXCEPTION", "message": message,
                                                      "fields": ["OwnerId"]}]}  # fmt: skip
        return {"id": self.add(sobject, fields), "success": True, "errors": []}

    # -- SOQL --------------------------------------------------------------------------

    def query(self, soql: str, all_rows: bool = False) -> list[dict[str, Any]]:
        """Run the SOQL subset (`all_rows`: as queryAll); raise SoqlError outside it."""
        match = _SOQL.match(soql)
        if match is None:
            raise SoqlError("MALFORMED_QUERY", "the fake understands SELECT … FROM … [WHERE …] [ORDER BY f] [LIMIT n]")
        sobject = match.group("obj")
        if sobject in self.config["absent_sobjects"]:
            raise SoqlError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        fields = [f.strip() for f in match.group("fields").split(",")]
        conditions = _parse_where(match.group("where") or "")
        for name in fields + [c[0] for c in conditions]:
            if name in self.config["missing_fields"]:
                raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'")
        stored = [(r, False) for r in self.records.get(sobject, {}).values()]
        if all_rows:
            stored += [(r, True) for r in self.deleted.get(sobject, {}).values()]
        found = []
        for record, deleted in stored:
            full = {"IsDeleted": deleted, **self._computed(sobject, record)}
            if not all_rows and (deleted or full.get("IsArchived")):
                continue  # query leaves out the recycle bin and archived activities; queryAll does not
            if all(_holds(full, condition) for condition in conditions):
                found.append(full)
        if match.group("order"):
            order = match.group("order")
            found.sort(key=lambda r: _sortable(r.get(order)))
        rows = []
        for full in found:
            row: dict[str, Any] = {"attributes": {"type": sobject, "url": f"/sobjects/{sobject}/{full['Id']}"}}
            row.update({f: full.get(f) for f in fields})
            rows.append(row)
        if match.group("limit"):
            rows = rows[: int(match.group("limit"))]
        return rows

    # -- HTTP --------------------------------------------------------------------------

    def _inject(self) -> tuple[Response, int] | None:
        cfg = self.config
        limited = cfg["limit_next"] > 0 or (cfg["limit_rate"] and self.random.random() < cfg["limit_rate"])
        failing = not limited and (
            cfg["error_next"] > 0 or (cfg["error_rate"] and self.random.random() < cfg["error_rate"])
        )
        if limited:
            cfg["limit_next"] = max(0, cfg["limit_next"] - 1)
            response, status = _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        elif failing:
            cfg["error_next"] = max(0, cfg["error_next"] - 1)
            response, status = _error(cfg["error_status"], "SERVER_UNAVAILABLE", "injected server error")
        else:
            return None
        if cfg["retry_after"] is not None:
            response.headers["Retry-After"] = str(cfg["retry_after"])
        return response, status

    def _api(self, rest: str) -> tuple[Response, int]:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.token}":
            return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        injected = self._inject()
        if injected is not None:
            return injected
        parts = [p for p in rest.split("/") if p]
        method = request.method
        body = request.get_json(silent=True) if request.data else None
        if parts[:2] == ["composite", "sobjects"] and len(parts) == 2 and method in ("PATCH", "POST"):
            return self._composite(method, body)
        if parts[:1] == ["sobjects"] and len(parts) == 2 and method == "POST":
            result = self._create(parts[1], body or {})
            if not result["success"]:
                return _error(400, result["errors"][0]["statusCode"], result["errors"][0]["message"])
            return jsonify(result), 201
        if parts[:1] == ["sobjects"] and len(parts) == 3 and parts[2] == "describe" and method == "GET":
            return self._describe(parts[1])
        if parts[:1] == ["sobjects"] and len(parts) == 3:
            return self._one(method, parts[1], parts[2], body)
        if parts[:1] in (["query"], ["queryAll"]) and method == "GET":
            return self._query(parts[1] if len(parts) > 1 else None, all_rows=parts[0] == "queryAll")
        if parts[:2] == ["jobs", "query"]:
            return self.bulk.handle(method, parts[2:], body, request.path.split("/")[3])
        return _error(404, "NOT_FOUND", "The requested resource does not exist")

    def _one(self, method: str, sobject: str, record_id: str, body: Any) -> tuple[Response, int]:
        if method == "PATCH":
            result = self._update(sobject, record_id, body or {})
            if result["success"]:
                return Response(status=204), 204
            error = result["errors"][0]
            status = 404 if error["statusCode"] == "ENTITY_IS_DELETED" else 400
            return _error(status, error["statusCode"], error["message"])
        record = self.records.get(sobject, {}).get(to_18(record_id))
        if record is None:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        if method == "DELETE":
            self.deleted.setdefault(sobject, {})[to_18(record_id)] = self.records[sobject].pop(to_18(record_id))
            return Response(status=204), 204
        return jsonify({"attributes": {"type": sobject}, **self._computed(sobject, record)}), 200

    def _composite(self, method: str, body: Any) -> tuple[Response, int]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return _error(400, "JSON_PARSER_ERROR", "expected {allOrNone, records: [...]}")
        records = body["records"]
        if len(records) > 200:
            return _error(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records")
        snapshot = copy.deepcopy(self.records)
        results = []
        for record in records:
            sobject = (record.get("attributes") or {}).get("type")
            fields = {k: v for k, v in record.items() if k not in ("attributes", "id")}
            if not sobject:
                results.append({"success": False, "errors": [{"statusCode": "INVALID_TYPE", "message": "no type"}]})
            elif method == "PATCH":
                results.append(self._update(sobject, str(record.get("id", "")), fields))
            else:
                results.append(self._create(sobject, {k: v for k, v in record.items() if k != "attributes"}))
        if body.get("allOrNone") and not all(r["success"] for r in results):
            self.records = snapshot
            rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "rolled back", "fields": []}
            results = [{"id": r.get("id"), "success": False, "errors": r["errors"] or [rolled]} for r in results]
        return jsonify(results), 200

    def _describe(self, sobject: str) -> tuple[Response, int]:
        if sobject in self.config["absent_sobjects"]:
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        names = dict.fromkeys(DESCRIBED.get(sobject, ["Id"]))
        for record in self.records.get(sobject, {}).values():
            names.update(dict.fromkeys(record))
        fields = [{"name": n} for n in names if n not in self.config["missing_fields"]]
        return jsonify({"name": sobject, "fields": fields}), 200

    def _query(self, locator: str | None, all_rows: bool = False) -> tuple[Response, int]:
        if locator is not None:
            rows = self._pages.pop(locator, None)
            if rows is None:
                return _error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        else:
            soql = request.args.get("q", "")
            counting = _COUNT.match(soql)
            try:
                rows = self.query(_COUNT.sub("SELECT Id FROM", soql, count=1) if counting else soql, all_rows)
            except SoqlError as exc:
                return _error(400, exc.code, str(exc))
            if counting:
                if re.search(r"\bORDER\s+BY\b", soql, re.IGNORECASE):
                    return _error(400, "MALFORMED_QUERY", "COUNT() cannot be used with ORDER BY")
                return jsonify({"totalSize": len(rows), "done": True, "records": []}), 200
        size = int(self.config["page_size"])
        batch = re.search(r"batchSize=(\d+)", request.headers.get("Sforce-Query-Options", ""))
        if batch:
            size = min(size, max(200, min(2000, int(batch.group(1)))))
        page, rest = rows[:size], rows[size:]
        answer: dict[str, Any] = {"totalSize": len(rows), "done": not rest, "records": page}
        if rest:
            next_locator = f"01gFAKE{next(self._ids)}-{size}"
            self._pages[next_locator] = rest
            version = request.path.split("/")[3]
            answer["nextRecordsUrl"] = f"/services/data/{version}/query/{next_locator}"
        return jsonify(answer), 200

    def _build_app(self) -> Flask:
        app = Flask(__name__)

        @app.route("/services/data/<version>/<path:rest>", methods=["GET", "POST", "PATCH", "DELETE"])
        def api(version: str, rest: str) -> Response:
            with self.lock:
                response, status = self._api(rest)
                if request.method in ("POST", "PATCH") and status < 300 and self.config["error_after_write_next"] > 0:
                    self.config["error_after_write_next"] -= 1
                    response, status = _error(500, "SERVER_UNAVAILABLE", "injected failure after the write")
                self.api_usage += 1
                response.status_code = status
                response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_usage}/{self.config['api_limit']}"
                self.calls.append(
                    {
                        "method": request.method,
                        "path": rest,
                        "query": request.args.get("q"),
                        "json": request.get_json(silent=True) if request.data else None,
                        "status": status,
                    }
                )
                return response

        @app.post("/_fake/reset")
        def reset() -> Response:
            self.reset()
            return jsonify(ok=True)

        @app.get("/_fake/calls")
        def calls() -> Response:
            with self.lock:
                return jsonify(self.calls)

        @app.route("/_fake/config", methods=["GET", "POST"])
        def config() -> Response | tuple[Response, int]:
            if request.method == "POST":
                try:
                    self.configure(**(request.get_json(force=True) or {}))
                except KeyError as exc:
                    return jsonify(error=str(exc)), 400
            with self.lock:
                return jsonify(self.config)

        @app.route("/_fake/records", methods=["GET", "POST"])
        def records() -> Response:
            if request.method == "POST":
                body = request.get_json(force=True)
                return jsonify(id=self.add(body["type"], body.get("fields", {}), body.get("id")))
            with self.lock:
                return jsonify(self.records)

        return app


def _parse_where(where: str) -> list[tuple[str, str, Any]]:
    """Parse `cond AND cond …` into (field, op, value) triples."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(where):
        match = _TOKEN.match(where, pos)
        if match is None or match.end() == pos:
            if where[pos:].strip() == "":
                break
            raise SoqlError("MALFORMED_QUERY", f"unexpected text in WHERE at {pos}")
        kind = match.lastgroup or "word"
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    conditions = []
    i = 0

    def value(token: tuple[str, str]) -> Any:
        kind, text = token
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if _DATETIME.fullmatch(text):
            return text  # compared as a time by _holds
        lowered = text.lower()
        literals: dict[str, Any] = {"true": True, "false": False, "null": None}
        if lowered in literals:
            return literals[lowered]
        try:
            return float(text)
        except ValueError:
            raise SoqlError("MALFORMED_QUERY", f"unexpected {text!r}") from None

    while i < len(tokens):
        name = tokens[i][1]
        op = tokens[i + 1][1].upper()
        if op == "IN":
            if i + 2 >= len(tokens) or tokens[i + 2][1] != "(":
                raise SoqlError("MALFORMED_QUERY", "IN needs a list")
            j, items = i + 3, []
            while tokens[j][1] != ")":
                if tokens[j][1] != ",":
                    items.append(value(tokens[j]))
                j += 1
            conditions.append((name, "IN", items))
            i = j + 1
        else:
            if op not in ("=", "!=", "LIKE", *_COMPARISONS):
                raise SoqlError("MALFORMED_QUERY", f"operator {op!r} is not supported by the fake")
            if op in _COMPARISONS and not _DATETIME.fullmatch(tokens[i + 2][1]):
                raise SoqlError("MALFORMED_QUERY", f"the fake compares {op} with dateTime literals only")
            conditions.append((name, op, value(tokens[i + 2])))
            i += 3
        if i < len(tokens):
            if tokens[i][1].upper() != "AND":
                raise SoqlError("MALFORMED_QUERY", "only AND is supported by the fake")
            i += 1
    return conditions


def _norm(name: str, value: Any) -> Any:
    # Id fields compare 15- and 18-character forms alike, as Salesforce does.
    if isinstance(value, str) and (name == "Id" or name.endswith("Id")) and len(value) in (15, 18):
        return to_18(value).lower()
    return value


def _time_ms(value: Any) -> int | None:
    if not isinstance(value, str) or not _DATETIME.fullmatch(value):
        return None
    text = value.replace("Z", "+00:00")
    if text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]  # `+0000` as the REST API writes it
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _sortable(value: Any) -> tuple[int, Any]:
    at = _time_ms(value)
    return (0, at) if at is not None else (1, str(value))


def _holds(record: dict[str, Any], condition: tuple[str, str, Any]) -> bool:
    name, op, expected = condition
    if op in _COMPARISONS:
        actual_ms, expected_ms = _time_ms(record.get(name)), _time_ms(expected)
        if actual_ms is None or expected_ms is None:
            return False  # null compares as nothing, as in SOQL
        return {">=": actual_ms >= expected_ms, ">": actual_ms > expected_ms, "<=": actual_ms <= expected_ms,
                "<": actual_ms < expected_ms}[op]  # fmt: skip
    actual = _norm(name, record.get(name))
    if op == "IN":
        return actual in {_norm(name, v) for v in expected}
    if op == "LIKE":
        pattern = "^" + ".*".join(re.escape(part) for part in str(expected).split("%")) + "$"
        return isinstance(actual, str) and re.match(pattern, actual, re.IGNORECASE) is not None
    equal = actual == _norm(name, expected)
    return equal if op == "=" else not equal


def outbound_message(org_id: str, notifications: list[tuple[str, str, dict[str, Any]]]) -> bytes:
    """Build the SOAP outbound message Salesforce would POST: (notification id, sObject type, fields)."""
    items = []
    for notification_id, sobject, fields in notifications:
        values = []
        for name, value in fields.items():
            if value is None:
                values.append(f'<sf:{name} xsi:nil="true"/>')
            else:
                text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                values.append(f"<sf:{name}>{escape(text)}</sf:{name}>")
        xsi_type = escape(sobject, {QUOTE: "&quot;"})
        items.append(
            f"<Notification><Id>{notification_id}</Id>"
            f'<sObject xsi:type="sf:{xsi_type}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
            f"{''.join(values)}</sObject></Notification>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org_id}</OrganizationId><ActionId>04k000000000001AAA</ActionId>"
        '<SessionId xsi:nil="true"/>'
        "<EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/59.0/00D000000000001</EnterpriseUrl>"
        "<PartnerUrl>https://example.my.salesforce.com/services/Soap/u/59.0/00D000000000001</PartnerUrl>"
        f"{''.join(items)}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def main(argv: list[str] | None = None) -> None:
    """Run the fake on a port until interrupted."""
    parser = argparse.ArgumentParser(description="A fake Salesforce REST API for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="fake-sf-token")
    args = parser.parse_args(argv)
    fake = FakeSalesforce(token=args.token)
    server = make_server(args.host, args.port, fake.app, threaded=True)
    print(f"fake salesforce on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
