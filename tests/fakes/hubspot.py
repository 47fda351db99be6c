"""A fake HubSpot API: the endpoints Pruner calls, in-memory records, every call recorded.

Use it in a thread (`FakeHubSpotServer`) or as a process (`python -m tests.fakes.hubspot
--port 8123 --token t`). Tests in other processes drive it over HTTP:

    POST /_fake/reset     forget records, calls and configuration
    POST /_fake/config    {"rate_limit": 10, "window_s": 10, "fail_rate": 0.3, "lost_answer_rate": 0.05, ...}
                          (see `Options`)
    POST /_fake/seed      {"contacts": [{"id", "properties", "history"?}],
                           "deals": [{"id", "properties", "contacts": [...]}],
                           "calls"|"emails"|"meetings": [{"id", "properties", "contacts": [...]}]}
                          ("history": {property: [[value, RFC 3339 time], ...]}, oldest first)
    GET  /_fake/calls     every API call: method, path, query, body, status, at
    GET  /_fake/state     contacts, deals, tasks (with their contacts), unsubscribed emails, GDPR-deleted contacts

It is strict where HubSpot is strict and a sloppy client would get away with it:
Bearer token, ≤ 100 inputs per batch (≤ 1,000 to an association batch read), no id twice
in one batch, string property values, required task properties and association types.
Faults happen before any write, as a real 429/503 would: a refused request changed
nothing; except script entries with
`"after_write": true`, which carry the request out and then lose or delay the answer.

`POST /crm/v3/objects/{type}/search` supports `filterGroups` (≤ 5, ORed; ≤ 6 filters
each, ANDed) with EQ, NEQ, HAS_PROPERTY, NOT_HAS_PROPERTY and CONTAINS_TOKEN, plus
`properties`, `limit` (≤ 200) and `after`. CONTAINS_TOKEN is strict: the text is split
into words at anything but letters, digits and "_", and the value must equal one word
(case-insensitive; `*` is a wildcard), since how HubSpot splits punctuated values is
unconfirmed. Records newer than `search_lag_s` are not found yet, as in HubSpot's index.
GT, GTE, LT and LTE compare numbers (epoch ms or RFC 3339 times as epoch ms); `sorts` takes one
property. A query pages through at most `search_cap` results (HubSpot: 10,000): a page reaching
past it is a 400, though `paging.next` pointed there. Search has its own per-second limit
(`search_rate_limit`, HubSpot's ~4-5 requests/s) on top of the portal's.

`GET /crm/v3/objects/{type}` lists every record in id order, paged with an opaque `after`
(≤ 100 per page, ≤ 50 with `propertiesWithHistory`, whose versions come newest first, as
HubSpot sends them). `POST /crm/v3/objects/{type}/batch/read` takes `{"inputs": [{"id"}],
"properties": [...], "propertiesWithHistory"?: [...]}` (≤ 100 inputs) and answers
`{"status": "COMPLETE", "results": [...]}`, 207 with `errors` naming ids it does not have.

A contact's `lastmodifieddate`, and a deal's `hs_lastmodifieddate` (HubSpot's names), is the
time of its latest property version unless set explicitly; `updatedAt` says the same.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import random
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

TOKEN = "fake-hubspot-token"
# The developer API key the Webhooks API v3 (`/webhooks/v3/{appId}/...`) takes as `hapikey`.
DEVELOPER_API_KEY = "fake-developer-api-key"
# Webhooks API v3: the event types a subscription may name (HubSpot's documented list, abridged
# to the CRM object families).
WEBHOOK_EVENT_TYPES = {
    f"{family}.{kind}"
    for family in ("contact", "company", "deal", "ticket", "product", "line_item", "object")
    for kind in ("creation", "deletion", "merge", "restore", "propertyChange", "associationChange")
} | {"contact.privacyDeletion", "conversation.creation", "conversation.deletion", "conversation.newMessage"}
ALIASES = {
    "0-1": "contacts", "0-3": "deals", "0-27": "tasks", "0-48": "calls", "0-49": "emails", "0-47": "meetings",
    "contact": "contacts", "deal": "deals", "task": "tasks", "call": "calls", "email": "emails", "meeting": "meetings",
}  # fmt: skip
TYPES = ("contacts", "deals", "tasks", "calls", "emails", "meetings")
ENGAGEMENTS = ("calls", "emails", "meetings")
# HUBSPOT_DEFINED association type ids, per direction.
ASSOCIATION_TYPES = {
    ("contacts", "deals"): 4,
    ("deals", "contacts"): 3,
    ("tasks", "contacts"): 204,
    ("contacts", "tasks"): 203,
    ("calls", "contacts"): 194,
    ("contacts", "calls"): 193,
    ("emails", "contacts"): 198,
    ("contacts", "emails"): 197,
    ("meetings", "contacts"): 200,
    ("contacts", "meetings"): 199,
}
# The property holding a record's last modification time (contacts have their own name for it).
MODIFIED = {"contacts": "lastmodifieddate", "deals": "hs_lastmodifieddate"}
SEARCH_CAP = 10_000  # results one search query can page through (HubSpot's documented limit)
# HubSpot's association batch reads take up to 1,000 ids (developer changelog, 2025-02-10), objects' 100.
ASSOCIATION_BATCH_LIMIT = 1_000
LIST_LIMIT, HISTORY_LIMIT = 100, 50  # records per list page, without and with propertiesWithHistory
TASK_STATUSES = {"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"}
TASK_PRIORITIES = {"NONE", "LOW", "MEDIUM", "HIGH"}
TASK_TYPES = {"EMAIL", "CALL", "TODO", "LINKED_IN"}

Reply = tuple[dict[str, Any], int]


@dataclass
class Options:
    """How the fake misbehaves. Everything off by default."""

    rate_limit: int | None = None  # requests per window, counted by arrival; 429 beyond it
    window_s: float = 10.0
    retry_after: str | None = None  # sent with 429s when set (HubSpot's own use of it is unconfirmed)
    fail_rate: float = 0.0  # share of API requests answered 503 before doing anything
    seed: int | None = None
    fail_status: int = 503
    # Share of API requests carried out and then answered 504, as a gateway whose upstream timed
    # out answers: the client cannot tell whether the write happened (drawn after `fail_rate`).
    lost_answer_rate: float = 0.0
    # Path prefix -> status: every API request under it fails that way (e.g. {"/crm/v3/objects/deals": 503});
    # a key ending in "$" is an exact path.
    fail_paths: dict[str, int] = field(default_factory=dict)
    # Record ids a batch update refuses (207), while a single PATCH of them succeeds.
    batch_fail_ids: list[str] = field(default_factory=list)
    # What a batch update naming a missing record answers: 207 (others written) or 400 (nothing written).
    missing_batch_status: int = 207
    page_size: int = 100  # association results per page
    # One-shot answers for the next matching requests: {"status", "path"?, "retry_after"?, "interval_ms"?, "body"?}.
    # "path" is a prefix, or exact when it ends with "$". With "after_write": true the request is carried out
    # first, then answered "status" (if given) after "delay_s" (if given): a lost or late answer.
    script: list[dict[str, Any]] = field(default_factory=list)
    # Properties the portal does not have: a write naming one is refused (400), as HubSpot does.
    missing_properties: list[str] = field(default_factory=list)
    # Contact id -> status: a task create (single or batch) associated to that contact is answered so, unwritten.
    fail_task_contacts: dict[str, int] = field(default_factory=dict)
    search_lag_s: float = 0.0  # records created this recently are not found by search yet
    # The portal's owner ids, when set: a write naming another `hubspot_owner_id` is refused (400), as HubSpot
    # refuses a value outside an enumeration property's options.
    owners: list[str] | None = None
    search_cap: int = SEARCH_CAP  # lower it to reach the cap with fewer records
    search_rate_limit: int | None = None  # search requests per second; 429 beyond it


def _error(status: int, message: str, category: str = "VALIDATION_ERROR", **context: Any) -> Reply:
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    if context:
        body["context"] = context
    return body, status


TASK_CREATE_PATHS = ("/crm/v3/objects/tasks", "/crm/v3/objects/tasks/batch/create")


def _matches(path: str, pattern: str) -> bool:
    """A path prefix, or the exact path when `pattern` ends with "$"."""
    return path == pattern[:-1] if pattern.endswith("$") else path.startswith(pattern)


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in re.split(r"[^0-9A-Za-z_]+", text) if t]


def _number(text: str) -> float | None:
    """A filter or property value as a number: digits, or an RFC 3339 time as epoch ms."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return None


def _sort_key(value: str | None) -> tuple[int, float, str]:
    """Numbers (and times) in numeric order, then other text; a missing value last."""
    if value is None or value == "":
        return (2, 0.0, "")
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class FakeHubSpot:
    """The fake's state and behaviour; `app()` serves it over HTTP. Thread-safe."""

    def __init__(self, token: str = TOKEN, developer_api_key: str = DEVELOPER_API_KEY) -> None:
        self.token = token
        self.developer_api_key = developer_api_key
        self.lock = threading.RLock()
        self.reset()

    # -- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.options = Options()
            self.rng = random.Random()
            self.objects: dict[str, dict[str, dict[str, str]]] = {t: {} for t in TYPES}
            self.associations: set[tuple[str, str, str, str]] = set()
            # (from type, from id, to type) -> to ids: `associated` without scanning every association
            # (a portal of 10,000+ engagements is read 200 records a page).
            self.linked: dict[tuple[str, str, str], set[str]] = {}
            self.unsubscribed: list[str] = []
            self.gdpr_deleted: list[str] = []  # contact ids, in the order their GDPR deletes arrived
            self.calls: list[dict[str, Any]] = []
            self.arrivals: deque[float] = deque()
            self.created: dict[tuple[str, str], float] = {}  # (type, id) -> time.monotonic() at creation
            # (type, id) -> property -> [(value, RFC 3339 time)], oldest first: what propertiesWithHistory shows.
            self.history: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = {}
            self.search_arrivals: deque[float] = deque()
            self.ids = itertools.count(9_000_001)
            # Webhooks API v3, per app id: settings and subscriptions.
            self.webhook_settings: dict[str, dict[str, Any]] = {}
            self.webhook_subscriptions: dict[str, list[dict[str, Any]]] = {}
            self.subscription_ids = itertools.count(1001)

    def configure(self, **options: Any) -> None:
        with self.lock:
            merged = {**asdict(self.options), **options}
            self.options = Options(**merged)
            if "seed" in options:
                self.rng = random.Random(options["seed"])
            if "rate_limit" in options or "window_s" in options:
                self.arrivals.clear()
            if "search_rate_limit" in options:
                self.search_arrivals.clear()

    def add_contact(self, contact_id: str, email: str | None = None, **properties: str) -> None:
        with self.lock:
            props = {"hs_object_id": contact_id, **properties}
            if email is not None:
                props["email"] = email
            self.objects["contacts"][contact_id] = props
            self._versions("contacts", contact_id, props)

    def add_deal(
        self, deal_id: str, contact_id: str | None = None, stage: str = "appointmentscheduled", **properties: str
    ) -> None:
        with self.lock:
            self.objects["deals"][deal_id] = {"hs_object_id": deal_id, "dealstage": stage, **properties}
            self._versions("deals", deal_id, self.objects["deals"][deal_id])
            if contact_id is not None:
                self._associate("deals", deal_id, "contacts", contact_id)

    def add_call(self, call_id: str, contact_id: str | None = None, **properties: str) -> None:
        """Log a call (an engagement) on a contact; `set_properties` edits it later, as a rep would."""
        with self.lock:
            self.objects["calls"][call_id] = {"hs_object_id": call_id, **properties}
            if contact_id is not None:
                self._associate("calls", call_id, "contacts", contact_id)

    def add_engagement(
        self, object_type: str, object_id: str, contacts: list[str] | tuple[str, ...] = (), **properties: str
    ) -> None:
        """Log a call, email or meeting on contacts (their `hs_timestamp` and other properties as given)."""
        if object_type not in ENGAGEMENTS:
            raise ValueError(f"not an engagement type: {object_type!r}")
        with self.lock:
            self.objects[object_type][object_id] = {"hs_object_id": object_id, **properties}
            for contact in contacts:
                self._associate(object_type, object_id, "contacts", contact)

    def set_history(self, object_type: str, object_id: str, name: str, versions: list[tuple[str, str]]) -> None:
        """Give a property its past values, [(value, RFC 3339 time)] oldest first; the last is the current one."""
        with self.lock:
            self.history.setdefault((object_type, object_id), {})[name] = list(versions)
            if versions:
                self.objects[object_type][object_id][name] = versions[-1][0]

    def set_properties(self, object_type: str, object_id: str, **properties: str) -> None:
        with self.lock:
            self.objects[object_type][object_id].update(properties)
            self._versions(object_type, object_id, properties)

    def _versions(self, object_type: str, object_id: str, properties: dict[str, str]) -> None:
        """Record new values in the property history, dated now (HubSpot keeps a version per change)."""
        if object_type not in ("contacts", "deals"):
            return
        now = _now_iso()
        kept = self.history.setdefault((object_type, object_id), {})
        for name, value in properties.items():
            if name != "hs_object_id":
                kept.setdefault(name, []).append((value, now))

    def delete(self, object_type: str, object_id: str) -> None:
        with self.lock:
            self.objects[object_type].pop(object_id, None)
            self.associations = {a for a in self.associations if (a[0], a[1]) != (object_type, object_id)}
            self.associations = {a for a in self.associations if (a[2], a[3]) != (object_type, object_id)}
            self.linked = {}
            for a in self.associations:
                self.linked.setdefault((a[0], a[1], a[2]), set()).add(a[3])

    def _associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        self.associations.add((from_type, from_id, to_type, to_id))
        self.associations.add((to_type, to_id, from_type, from_id))
        self.linked.setdefault((from_type, from_id, to_type), set()).add(to_id)
        self.linked.setdefault((to_type, to_id, from_type), set()).add(from_id)

    def contact(self, contact_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self.objects["contacts"][contact_id])

    def deal(self, deal_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self.objects["deals"][deal_id])

    def associated(self, from_type: str, from_id: str, to_type: str) -> list[str]:
        with self.lock:
            return sorted(self.linked.get((from_type, from_id, to_type), ()))

    def tasks_for(self, contact_id: str) -> list[dict[str, str]]:
        with self.lock:
            return [dict(self.objects["tasks"][t]) for t in self.associated("contacts", contact_id, "tasks")]

    def api_calls(self, method: str | None = None, contains: str = "") -> list[dict[str, Any]]:
        """Recorded API calls (not control calls), optionally filtered by method and path substring."""
        with self.lock:
            return [c for c in self.calls if (method is None or c["method"] == method) and contains in c["path"]]

    def state(self) -> dict[str, Any]:
        with self.lock:
            tasks = {
                tid: {"properties": props, "contacts": self.associated("tasks", tid, "contacts")}
                for tid, props in self.objects["tasks"].items()
            }
            return {
                "contacts": self.objects["contacts"],
                "deals": self.objects["deals"],
                "tasks": tasks,
                "unsubscribed": list(self.unsubscribed),
                "gdpr_deleted": list(self.gdpr_deleted),
            }

    # -- HTTP ------------------------------------------------------------------------------------

    def app(self) -> Flask:
        """Return the WSGI app serving this fake."""
        app = Flask("fake_hubspot")
        app.before_request(self._gate)
        app.after_request(self._record)
        app.after_request(self._after_write)  # runs before _record: Flask calls these in reverse
        self._control_routes(app)
        self._crm_routes(app)
        self._webhook_routes(app)
        return app

    def _gate(self) -> Response | Reply | None:
        g.at = time.time()
        if request.path.startswith("/_fake/"):
            return None
        if request.path.startswith("/webhooks/v3/"):
            # The Webhooks API is the app's, not a portal's: developer API key as `hapikey`.
            if request.args.get("hapikey") != self.developer_api_key:
                return _error(401, "The API key provided is invalid.", "INVALID_AUTHENTICATION")
        elif request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication credentials not found.", "INVALID_AUTHENTICATION")
        with self.lock:
            o = self.options
            deferred = None  # an "after_write" script entry: applies only if no fault below refuses the request
            if o.rate_limit is not None:
                now = time.monotonic()
                self.arrivals.append(now)
                while self.arrivals and self.arrivals[0] <= now - o.window_s:
                    self.arrivals.popleft()
                if len(self.arrivals) > o.rate_limit:
                    return self._rate_limited(o.retry_after, int(o.window_s * 1000))
            if o.search_rate_limit is not None and request.path.endswith("/search"):
                now = time.monotonic()
                self.search_arrivals.append(now)
                while self.search_arrivals and self.search_arrivals[0] <= now - 1.0:
                    self.search_arrivals.popleft()
                if len(self.search_arrivals) > o.search_rate_limit:
                    return self._rate_limited(o.retry_after, 1000, "SECONDLY")
            for i, entry in enumerate(o.script):
                if _matches(request.path, entry.get("path", "")):
                    del o.script[i]
                    if entry.get("after_write"):
                        deferred = entry
                        break
                    return self._scripted(entry)
            for prefix, status in o.fail_paths.items():
                # A trailing "$" matches the path exactly (POST /crm/v3/objects/tasks, not its batch/create).
                if _matches(request.path, prefix):
                    return _error(status, "Injected failure", "SERVICE_UNAVAILABLE")
            if o.fail_task_contacts and request.method == "POST" and request.path in TASK_CREATE_PATHS:
                body = request.get_json(silent=True) or {}
                items = body.get("inputs", []) if request.path.endswith("/batch/create") else [body]
                for item in items if isinstance(items, list) else []:
                    for assoc in (item.get("associations") or []) if isinstance(item, dict) else []:
                        status = o.fail_task_contacts.get(str((assoc.get("to") or {}).get("id")))
                        if status is not None:
                            return _error(status, "Injected failure", "SERVICE_UNAVAILABLE")
            if o.fail_rate and self.rng.random() < o.fail_rate:
                return _error(o.fail_status, "Injected failure", "SERVICE_UNAVAILABLE")
            if deferred is None and o.lost_answer_rate and self.rng.random() < o.lost_answer_rate:
                deferred = {"status": 504}
        g.after_write = deferred
        return None

    def _after_write(self, response: Response) -> Response:
        entry = g.get("after_write")
        if entry is None:
            return response
        if entry.get("delay_s"):
            time.sleep(float(entry["delay_s"]))  # lock not held: the fake keeps serving meanwhile
        if entry.get("status") is None:
            return response
        replaced = self._scripted(entry)
        return replaced if isinstance(replaced, Response) else jsonify(replaced[0])

    def _rate_limited(
        self, retry_after: str | None, interval_ms: int, policy: str = "TEN_SECONDLY_ROLLING"
    ) -> Response:
        response = jsonify(
            {
                "status": "error",
                "errorType": "RATE_LIMIT",
                "policyName": policy,
                "message": f"You have reached your {policy.lower()} limit.",
                "correlationId": str(uuid.uuid4()),
            }
        )
        response.status_code = 429
        limit = self.options.rate_limit or 100
        response.headers["X-HubSpot-RateLimit-Max"] = str(limit)
        response.headers["X-HubSpot-RateLimit-Remaining"] = "0"
        response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(interval_ms)
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def _scripted(self, entry: dict[str, Any]) -> Response | Reply:
        status = int(entry["status"])
        if status == 429 and "body" not in entry:
            return self._rate_limited(entry.get("retry_after"), int(entry.get("interval_ms", 10_000)))
        if "body" in entry:
            response = jsonify(entry["body"])
            response.status_code = status
        else:
            response = jsonify(_error(status, f"Scripted HTTP {status}", "SCRIPTED")[0])
            response.status_code = status
        if entry.get("retry_after") is not None:
            response.headers["Retry-After"] = str(entry["retry_after"])
        return response

    def _record(self, response: Response) -> Response:
        if not request.path.startswith("/_fake/"):
            with self.lock:
                self.calls.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "query": request.args.to_dict(),
                        "body": request.get_json(silent=True),
                        "status": response.status_code,
                        "at": g.get("at", time.time()),
                    }
                )
        return response

    def _control_routes(self, app: Flask) -> None:
        @app.post("/_fake/reset")
        def reset() -> Reply:
            self.reset()
            return {"ok": True}, 200

        @app.post("/_fake/config")
        def config() -> Reply:
            try:
                self.configure(**(request.get_json(force=True) or {}))
            except TypeError as exc:
                return {"error": str(exc)}, 400
            return asdict(self.options), 200

        @app.post("/_fake/seed")
        def seed() -> Reply:
            body = request.get_json(force=True) or {}
            for c in body.get("contacts", []):
                self.add_contact(str(c["id"]), **c.get("properties", {}))
                for name, versions in (c.get("history") or {}).items():
                    self.set_history("contacts", str(c["id"]), name, [tuple(v) for v in versions])
            for d in body.get("deals", []):
                props = dict(d.get("properties", {}))
                stage = props.pop("dealstage", "appointmentscheduled")
                self.add_deal(str(d["id"]), None, stage, **props)
                for contact in d.get("contacts", []):
                    with self.lock:
                        self._associate("deals", str(d["id"]), "contacts", str(contact))
            for kind in ENGAGEMENTS:
                for c in body.get(kind, []):
                    contacts = [str(contact) for contact in c.get("contacts", [])]
                    self.add_engagement(kind, str(c["id"]), contacts, **c.get("properties", {}))
            return {"ok": True}, 200

        @app.get("/_fake/calls")
        def calls() -> Response:
            return jsonify(self.api_calls())

        @app.get("/_fake/state")
        def state() -> Reply:
            return self.state(), 200

    def _crm_routes(self, app: Flask) -> None:
        app.add_url_rule("/crm/v3/objects/<otype>/<oid>", view_func=self._get, methods=["GET"])
        app.add_url_rule("/crm/v3/objects/<otype>/<oid>", view_func=self._patch, methods=["PATCH"])
        app.add_url_rule("/crm/v3/objects/<otype>", view_func=self._create, methods=["POST"])
        app.add_url_rule("/crm/v3/objects/<otype>", view_func=self._list, methods=["GET"])
        app.add_url_rule("/crm/v3/objects/<otype>/batch/update", view_func=self._batch_update, methods=["POST"])
        app.add_url_rule("/crm/v3/objects/<otype>/batch/read", view_func=self._batch_read, methods=["POST"])
        app.add_url_rule("/crm/v3/objects/<otype>/batch/create", view_func=self._batch_create, methods=["POST"])
        app.add_url_rule("/crm/v3/objects/<otype>/search", view_func=self._search, methods=["POST"])
        app.add_url_rule("/crm/v3/objects/<otype>/gdpr-delete", view_func=self._gdpr_delete, methods=["POST"])
        app.add_url_rule(
            "/crm/v4/objects/<from_type>/<oid>/associations/<to_type>", view_func=self._associations, methods=["GET"]
        )
        app.add_url_rule(
            "/crm/v4/associations/<from_type>/<to_type>/batch/read",
            view_func=self._batch_associations,
            methods=["POST"],
        )
        app.add_url_rule(
            "/communication-preferences/v4/statuses/<subscriber>/unsubscribe-all",
            view_func=self._unsubscribe_all,
            methods=["POST"],
        )
        app.add_url_rule(
            "/communication-preferences/v4/statuses/<subscriber>/unsubscribe-all",
            view_func=self._unsubscribe_all_status,
            methods=["GET"],
        )

    # -- CRM endpoints ---------------------------------------------------------------------------

    @staticmethod
    def _json() -> dict[str, Any] | None:
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else None

    def _properties_error(self, props: Any) -> str | None:
        if not isinstance(props, dict):
            return "properties must be an object"
        bad = [k for k, v in props.items() if not isinstance(v, str)]
        if bad:
            return f"property values must be strings: {bad}"
        unknown = [k for k in props if k in self.options.missing_properties]
        if unknown:
            return f'Property values were not valid: Property "{unknown[0]}" does not exist'
        owner = props.get("hubspot_owner_id")
        if self.options.owners is not None and owner and owner not in self.options.owners:
            return f'Property values were not valid: {owner} was not one of the allowed options for "hubspot_owner_id"'
        return None

    def _props(self, otype: str, oid: str) -> dict[str, str]:
        """A record's properties, with its modification time as HubSpot keeps it: its latest version's. Lock held."""
        props = self.objects[otype][oid]
        name = MODIFIED.get(otype)
        stamps = [at for versions in self.history.get((otype, oid), {}).values() for _, at in versions]
        if name is None or name in props or not stamps:
            return props
        return {**props, name: max(stamps, key=_sort_key)}

    def _view(self, otype: str, oid: str, wanted: list[str] | None, history: list[str] | None = None) -> dict[str, Any]:
        props = self._props(otype, oid)
        shown = props if wanted is None else {k: props.get(k) for k in [*wanted, "hs_object_id"]}
        updated = props.get(MODIFIED.get(otype, "hs_lastmodifieddate")) or _now_iso()
        view = {"id": oid, "properties": shown, "createdAt": _now_iso(), "updatedAt": updated, "archived": False}
        if history:
            kept = self.history.get((otype, oid), {})
            view["propertiesWithHistory"] = {
                name: [
                    {"value": value, "timestamp": at, "sourceType": "CRM_UI", "sourceId": "userId:1"}
                    for value, at in reversed(kept.get(name, []))
                ]
                for name in history
            }
        return view

    def _get(self, otype: str, oid: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        if otype not in TYPES:
            return _error(400, f"Unable to infer object type from: {otype}")
        with self.lock:
            if oid not in self.objects[otype]:
                return _error(404, "Object not found.", "OBJECT_NOT_FOUND")
            wanted = [p for p in request.args.get("properties", "").split(",") if p]
            body = self._view(otype, oid, wanted or None)
            assoc = {}
            for to_type in [ALIASES.get(t, t) for t in request.args.get("associations", "").split(",") if t]:
                ids = self.associated(otype, oid, to_type)
                if ids:
                    kind = f"{otype[:-1]}_to_{to_type[:-1]}"
                    assoc[to_type] = {"results": [{"id": i, "type": kind} for i in ids]}
            if assoc:
                body["associations"] = assoc
            return body, 200

    def _patch(self, otype: str, oid: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        body = self._json()
        if otype not in TYPES or body is None:
            return _error(400, "Invalid input JSON or object type")
        problem = self._properties_error(body.get("properties"))
        if problem:
            return _error(400, problem)
        with self.lock:
            if oid not in self.objects[otype]:
                return _error(404, "resource not found", "OBJECT_NOT_FOUND")
            self.objects[otype][oid].update(body["properties"])
            self._versions(otype, oid, body["properties"])
            return self._view(otype, oid, None), 200

    def _batch_inputs(self, body: dict[str, Any] | None, limit: int = 100) -> list[dict[str, Any]] | Reply:
        if body is None or not isinstance(body.get("inputs"), list):
            return _error(400, "Invalid input JSON: inputs is required")
        inputs: list[dict[str, Any]] = body["inputs"]
        if len(inputs) > limit:
            return _error(400, f"Batch size of {len(inputs)} exceeds the limit of {limit}")
        return inputs

    def _batch_update(self, otype: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        inputs = self._batch_inputs(self._json())
        if isinstance(inputs, tuple):
            return inputs
        ids = [str(i.get("id")) for i in inputs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            return _error(400, f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique")
        for item in inputs:
            problem = self._properties_error(item.get("properties"))
            if problem:
                return _error(400, problem)
        with self.lock:
            missing = [i for i in ids if i not in self.objects[otype]]
            if missing and self.options.missing_batch_status == 400:
                return _error(400, f"Could not get some {otype} objects, they may be deleted or not exist.",
                              "OBJECT_NOT_FOUND", ids=missing)  # fmt: skip
            refused = [i for i in ids if i in self.options.batch_fail_ids and i not in missing]
            results = []
            for item in inputs:
                oid = str(item["id"])
                if oid in missing or oid in refused:
                    continue
                self.objects[otype][oid].update(item["properties"])
                self._versions(otype, oid, item["properties"])
                results.append(self._view(otype, oid, None))
            errors = []
            if missing:
                errors.append(
                    {
                        "status": "error",
                        "category": "OBJECT_NOT_FOUND",
                        "message": f"Could not get some {otype} objects, they may be deleted or not exist.",
                        "context": {"ids": missing},
                    }
                )
            if refused:
                errors.append(
                    {"status": "error", "category": "CONFLICT", "message": "Simulated per-record failure",
                     "context": {"ids": refused}}
                )  # fmt: skip
            body: dict[str, Any] = {"status": "COMPLETE", "results": results}
            if errors:
                body.update(errors=errors, numErrors=len(errors))
                return body, 207
            return body, 200

    def _batch_read(self, otype: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        body = self._json()
        inputs = self._batch_inputs(body)
        if isinstance(inputs, tuple):
            return inputs
        wanted = [str(p) for p in (body or {}).get("properties", [])]
        history = [str(p) for p in (body or {}).get("propertiesWithHistory") or []]
        with self.lock:
            ids = [str(i.get("id")) for i in inputs]
            results = [self._view(otype, i, wanted, history) for i in dict.fromkeys(ids) if i in self.objects[otype]]
            missing = [i for i in ids if i not in self.objects[otype]]
        out: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            out["errors"] = [
                {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "Could not get some objects",
                 "context": {"ids": missing}}
            ]  # fmt: skip
            return out, 207
        return out, 200

    def _new_task(self, item: dict[str, Any]) -> tuple[str | None, str]:
        """Create one task from an input; return (task id, "") or (None, why refused). Lock held."""
        props = item.get("properties")
        problem = self._properties_error(props)
        if problem:
            return None, problem
        assert isinstance(props, dict)
        if not props.get("hs_timestamp"):
            return None, "Property hs_timestamp is required"
        for name, allowed in (
            ("hs_task_status", TASK_STATUSES),
            ("hs_task_priority", TASK_PRIORITIES),
            ("hs_task_type", TASK_TYPES),
        ):
            if name in props and props[name] not in allowed:
                return None, f"{props[name]!r} is not a valid option for {name}"
        contacts = []
        for assoc in item.get("associations") or []:
            types = assoc.get("types") or []
            if [t.get("associationTypeId") for t in types] != [204] or types[0].get("associationCategory") != (
                "HUBSPOT_DEFINED"
            ):
                return None, f"unsupported association types {types}"
            target = str((assoc.get("to") or {}).get("id"))
            if target not in self.objects["contacts"]:
                return None, f"association target contact {target} was not found"
            contacts.append(target)
        task_id = str(next(self.ids))
        self.objects["tasks"][task_id] = {"hs_object_id": task_id, **props}
        self.created[("tasks", task_id)] = time.monotonic()
        for contact in contacts:
            self._associate("tasks", task_id, "contacts", contact)
        return task_id, ""

    def _create(self, otype: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        body = self._json()
        if otype != "tasks" or body is None:
            return _error(400, "this fake creates tasks only")
        with self.lock:
            task_id, problem = self._new_task(body)
            if task_id is None:
                return _error(400, problem)
            return self._view("tasks", task_id, None), 201

    def _batch_create(self, otype: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        if otype != "tasks":
            return _error(400, "this fake creates tasks only")
        inputs = self._batch_inputs(self._json())
        if isinstance(inputs, tuple):
            return inputs
        with self.lock:
            results, errors = [], []
            for item in inputs:
                trace = item.get("objectWriteTraceId")
                task_id, problem = self._new_task(item)
                if task_id is None:
                    errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": problem,
                                   "context": {"objectWriteTraceId": [trace]}})  # fmt: skip
                else:
                    view = self._view("tasks", task_id, None)
                    if trace is not None:
                        view["objectWriteTraceId"] = trace
                    results.append(view)
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
            return body, 207
        return body, 201

    @staticmethod
    def _filter_matches(props: dict[str, str], f: dict[str, Any]) -> bool | str:
        """Whether a record's properties pass one search filter; a string says why the filter is invalid."""
        name, operator, value = f.get("propertyName"), f.get("operator"), f.get("value")
        if not isinstance(name, str):
            return "filter propertyName is required"
        have = props.get(name)
        if operator == "HAS_PROPERTY":
            return have not in (None, "")
        if operator == "NOT_HAS_PROPERTY":
            return have in (None, "")
        if not isinstance(value, str):
            return f"filter on {name}: value must be a string"
        if operator == "EQ":
            return (have or "").lower() == value.lower()
        if operator == "NEQ":
            return (have or "").lower() != value.lower()
        if operator == "CONTAINS_TOKEN":
            return any(fnmatch.fnmatchcase(t, value.lower()) for t in _tokens(have or ""))
        if operator in ("GT", "GTE", "LT", "LTE"):
            bound, mine = _number(value), _number(have or "")
            if bound is None:
                return f"filter on {name}: {value!r} is not a number or a time"
            if mine is None:
                return False
            return {"GT": mine > bound, "GTE": mine >= bound, "LT": mine < bound, "LTE": mine <= bound}[operator]
        return f"unsupported operator {operator!r}"

    def _search(self, otype: str) -> Reply:
        otype = ALIASES.get(otype, otype)
        body = self._json()
        if otype not in TYPES or body is None:
            return _error(400, "Invalid input JSON or object type")
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > 5:
            return _error(400, "There can be at most 5 filterGroups")
        if any(not isinstance(grp, dict) or len(grp.get("filters") or []) > 6 for grp in groups):
            return _error(400, "There can be at most 6 filters in a filterGroup")
        limit = int(body.get("limit", 10))
        if not 0 < limit <= 200:
            return _error(400, f"limit must be between 1 and 200, got {limit}")
        wanted = [str(p) for p in body.get("properties") or []] or None
        sorts = body.get("sorts") or []
        if not isinstance(sorts, list) or len(sorts) > 1 or any(not isinstance(x, dict) for x in sorts):
            return _error(400, "sorts takes at most one {propertyName, direction}")
        start = int(body.get("after") or 0)
        if start + limit > self.options.search_cap:
            # What HubSpot does past 10,000 results, though its paging.next pointed on.
            return _error(400, f"Search results are limited to {self.options.search_cap} records per query")
        with self.lock:
            now = time.monotonic()
            hits = []
            for oid in self.objects[otype]:
                if now - self.created.get((otype, oid), 0.0) < self.options.search_lag_s:
                    continue  # not indexed yet
                props = self._props(otype, oid)
                verdicts = [[self._filter_matches(props, f) for f in grp.get("filters") or []] for grp in groups]
                problems = [v for grp in verdicts for v in grp if isinstance(v, str)]
                if problems:
                    return _error(400, problems[0])
                if not groups or any(all(grp) for grp in verdicts):
                    hits.append(oid)
            for order in sorts:
                prop, descending = str(order.get("propertyName")), order.get("direction") == "DESCENDING"
                hits.sort(key=lambda oid: _sort_key(self._props(otype, oid).get(prop)), reverse=descending)
            results = [self._view(otype, oid, wanted) for oid in hits[start : start + limit]]
        out: dict[str, Any] = {"total": len(hits), "results": results}
        if start + limit < len(hits):
            out["paging"] = {"next": {"after": str(start + limit)}}
        return out, 200

    def _list(self, otype: str) -> Reply:
        """GET /crm/v3/objects/{type}: every record in id order, `after` paging, optional property history."""
        otype = ALIASES.get(otype, otype)
        if otype not in TYPES:
            return _error(400, f"Unable to infer object type from: {otype}")
        wanted = [p for p in request.args.get("properties", "").split(",") if p] or None
        with_history = [p for p in request.args.get("propertiesWithHistory", "").split(",") if p]
        try:
            limit = int(request.args.get("limit", "10"))
        except ValueError:
            return _error(400, "limit must be a number")
        limit = max(1, min(limit, HISTORY_LIMIT if with_history else LIST_LIMIT))
        after = request.args.get("after")
        with self.lock:
            ids = sorted(self.objects[otype], key=_sort_key)
            start = 0
            if after:
                # An opaque token to the client; here, the id of the last record sent.
                start = next((i for i, oid in enumerate(ids) if _sort_key(oid) > _sort_key(after)), len(ids))
            page = ids[start : start + limit]
            results = [self._view(otype, oid, wanted, with_history) for oid in page]
        body: dict[str, Any] = {"results": results}
        if start + limit < len(ids):
            body["paging"] = {"next": {"after": page[-1], "link": f"?after={page[-1]}"}}
        return body, 200

    def _association_page(self, from_type: str, oid: str, to_type: str, after: str | None) -> dict[str, Any]:
        ids = self.associated(from_type, oid, to_type)
        start = int(after or 0)
        size = self.options.page_size
        type_id = ASSOCIATION_TYPES.get((from_type, to_type), 1)
        page: dict[str, Any] = {
            "to": [
                {
                    "toObjectId": int(i) if i.isdigit() else i,
                    "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": None}],
                }
                for i in ids[start : start + size]
            ]
        }
        if start + size < len(ids):
            page["paging"] = {"next": {"after": str(start + size), "link": None}}
        return page

    def _associations(self, from_type: str, oid: str, to_type: str) -> Reply:
        from_type, to_type = ALIASES.get(from_type, from_type), ALIASES.get(to_type, to_type)
        with self.lock:
            if oid not in self.objects.get(from_type, {}):
                return _error(404, "Object not found.", "OBJECT_NOT_FOUND")
            page = self._association_page(from_type, oid, to_type, request.args.get("after"))
        body = {"results": page["to"]}
        if "paging" in page:
            body["paging"] = page["paging"]
        return body, 200

    def _batch_associations(self, from_type: str, to_type: str) -> Reply:
        from_type, to_type = ALIASES.get(from_type, from_type), ALIASES.get(to_type, to_type)
        inputs = self._batch_inputs(self._json(), ASSOCIATION_BATCH_LIMIT)
        if isinstance(inputs, tuple):
            return inputs
        with self.lock:
            results, errors = [], []
            for item in inputs:
                oid = str(item.get("id"))
                page = self._association_page(from_type, oid, to_type, item.get("after"))
                if page["to"]:
                    results.append({"from": {"id": oid}, **page})
                else:
                    errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                                   "message": f"No {to_type} are associated with {from_type} {oid}.",
                                   "context": {"fromObjectId": [oid]}})  # fmt: skip
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
            return body, 207
        return body, 200

    def _gdpr_delete(self, otype: str) -> Reply | Response:
        """POST /crm/v3/objects/contacts/gdpr-delete {"objectId", "idProperty"?}: 204, the contact gone for good."""
        body = self._json()
        if ALIASES.get(otype, otype) != "contacts":
            return _error(400, "this fake GDPR-deletes contacts only")
        if body is None or not str(body.get("objectId") or "").strip():
            return _error(400, "objectId must not be empty")
        with self.lock:
            wanted = str(body["objectId"])
            id_property = body.get("idProperty")
            found = [
                cid
                for cid, props in self.objects["contacts"].items()
                if (props.get(str(id_property)) if id_property else cid) == wanted
            ]
            if not found:
                return _error(404, "Object not found.", "OBJECT_NOT_FOUND")
            self.gdpr_deleted.append(found[0])
            self.delete("contacts", found[0])
        return Response(status=204)

    def _unsubscribe_all(self, subscriber: str) -> Reply:
        if request.args.get("channel") != "EMAIL":
            return _error(400, "channel must be EMAIL")
        with self.lock:
            self.unsubscribed.append(subscriber)
        return _unsubscribed_answer(subscriber, True), 200

    def _unsubscribe_all_status(self, subscriber: str) -> Reply:
        # HubSpot answers an empty `results` for someone who has not opted out of all email.
        if request.args.get("channel") != "EMAIL":
            return _error(400, "channel must be EMAIL")
        with self.lock:
            out = subscriber in self.unsubscribed
        return _unsubscribed_answer(subscriber, out), 200

    # -- Webhooks API v3 (app settings and subscriptions) -----------------------------------------

    def _webhook_routes(self, app: Flask) -> None:
        root = "/webhooks/v3/<int:app_id>"
        app.add_url_rule(f"{root}/settings", view_func=self._get_webhook_settings, methods=["GET"])
        app.add_url_rule(f"{root}/settings", view_func=self._put_webhook_settings, methods=["PUT"])
        app.add_url_rule(f"{root}/subscriptions", view_func=self._list_subscriptions, methods=["GET"])
        app.add_url_rule(f"{root}/subscriptions", view_func=self._create_subscription, methods=["POST"])
        app.add_url_rule(
            f"{root}/subscriptions/batch/update", view_func=self._batch_update_subscriptions, methods=["POST"]
        )

    def _get_webhook_settings(self, app_id: int) -> Reply:
        with self.lock:
            found = self.webhook_settings.get(str(app_id))
        if found is None:
            return _error(404, f"No webhook settings for app {app_id}", "OBJECT_NOT_FOUND")
        return found, 200

    def _put_webhook_settings(self, app_id: int) -> Reply:
        body = self._json()
        if body is None or not isinstance(body.get("targetUrl"), str) or not isinstance(body.get("throttling"), dict):
            return _error(400, "targetUrl (string) and throttling (object) are required")
        with self.lock:
            now = _now_iso()
            previous = self.webhook_settings.get(str(app_id), {})
            self.webhook_settings[str(app_id)] = {
                "targetUrl": body["targetUrl"],
                "throttling": body["throttling"],
                "createdAt": previous.get("createdAt", now),
                "updatedAt": now,
            }
            return self.webhook_settings[str(app_id)], 200

    def _list_subscriptions(self, app_id: int) -> Reply:
        with self.lock:
            return {"results": [dict(s) for s in self.webhook_subscriptions.get(str(app_id), [])]}, 200

    def _create_subscription(self, app_id: int) -> Reply:
        body = self._json()
        if body is None:
            return _error(400, "Invalid input JSON")
        event_type, prop, type_id = body.get("eventType"), body.get("propertyName"), body.get("objectTypeId")
        if event_type not in WEBHOOK_EVENT_TYPES:
            return _error(400, f"Unknown eventType {event_type!r}")
        if event_type.endswith(".propertyChange") and not prop:
            return _error(400, "propertyName is required for a propertyChange subscription")
        if event_type.startswith("object.") and not type_id:
            return _error(400, "objectTypeId is required for an object.* subscription")
        with self.lock:
            subs = self.webhook_subscriptions.setdefault(str(app_id), [])
            for existing in subs:
                same = (existing["eventType"], existing.get("propertyName"), existing.get("objectTypeId"))
                if same == (event_type, prop, type_id):
                    return _error(409, "A subscription for this event already exists", "CONFLICT")
            now = _now_iso()
            created: dict[str, Any] = {
                "id": str(next(self.subscription_ids)),
                "eventType": event_type,
                "active": bool(body.get("active", False)),
                "createdAt": now,
                "updatedAt": now,
            }
            if prop:
                created["propertyName"] = prop
            if type_id:
                created["objectTypeId"] = type_id
            subs.append(created)
            return dict(created), 201

    def _batch_update_subscriptions(self, app_id: int) -> Reply:
        body = self._json()
        inputs = body.get("inputs") if body else None
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "inputs must be a non-empty list of {id, active}")
        with self.lock:
            subs = {s["id"]: s for s in self.webhook_subscriptions.get(str(app_id), [])}
            results = []
            for item in inputs:
                sub = subs.get(str(item.get("id"))) if isinstance(item, dict) else None
                if sub is None or not isinstance(item.get("active"), bool):
                    return _error(400, f"no subscription {item!r:.60} for app {app_id}, or active is not a boolean")
                sub["active"] = item["active"]
                sub["updatedAt"] = _now_iso()
                results.append(dict(sub))
            now = _now_iso()
            return {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}, 200


def _unsubscribed_answer(subscriber: str, unsubscribed: bool) -> dict[str, Any]:
    """The v4 unsubscribe-all answer: one portal-wide NOT_SUBSCRIBED status, or none."""
    status = {
        "subscriberIdString": subscriber,
        "channel": "EMAIL",
        "status": "NOT_SUBSCRIBED",
        "wideStatusType": "PORTAL_WIDE",
        "timestamp": _now_iso(),
    }
    results = [status] if unsubscribed else []
    return {"status": "COMPLETE", "results": results, "startedAt": _now_iso(), "completedAt": _now_iso()}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # paths carry emails; and test output needs no access log


class FakeHubSpotServer:
    """Serve a `FakeHubSpot` on a free local port from a background thread."""

    def __init__(self, fake: FakeHubSpot | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake or FakeHubSpot()
        self.server: BaseWSGIServer = make_server(
            host, port, self.fake.app(), threaded=True, request_handler=_QuietHandler
        )
        self.url = f"http://{host}:{self.server.server_port}"
        # A short poll interval: `stop` waits for the serving loop to notice.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hubspot", daemon=True
        )

    def start(self) -> FakeHubSpotServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeHubSpotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake HubSpot API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--token", default=TOKEN)
    args = parser.parse_args(argv)
    server = make_server(
        args.host, args.port, FakeHubSpot(args.token).app(), threaded=True, request_handler=_QuietHandler
    )
    print(f"fake HubSpot on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
