"""`pruner backfill hubspot|salesforce`: a CRM's existing history, as canonical events (issue #14).

HubSpot (`Backfill`): reads contacts and deals with their property history, and calls, emails
and meetings with their contacts (worker/crm/hubspot_backfill.py), and maps them with the
webhook mapping (rules/hubspot_history.py). Salesforce (`SalesforceBackfill`): reads Leads,
Opportunities, Individuals, Tasks and Events by SOQL (worker/crm/salesforce_backfill.py; large
objects by Bulk API 2.0 query jobs, worker/crm/salesforce_bulk.py, as `BulkChoice` says) and
maps them with the Outbound Message mapping (rules/salesforce_history.py). Both (`Run`) send
the events to one of three sinks (worker/backfill_sinks.py):

- `QueueSink`: the live pipeline, as the webhooks do: RQ jobs of at most 1,000 events
  (worker/queues.py `enqueue_events`), applied and deduplicated by the workers. `pruner
  backfill` without `--out` does not queue pages as they are read: it spools them and queues
  each lead's events together once everything is read (worker/backfill_spool.py `SpoolSink`);
- `JsonlSink`: canonical JSONL that `pruner simulate` reads;
- `NullSink`: nothing (counts only); `pruner backfill --dry-run` keeps the events in memory
  instead (worker/firstrun.py `PreviewSink`) to say what the first live run would do.

Resumable: after each page's events are queued or written (and flushed to disk), the object
type's cursor moves on in Redis (`pruner:backfill:<crm>:<run>`, a hash, one field per object
type; the run is the window and the destination). Stopped midway, the same command continues
from the cursors; the page that was being read when it stopped is read again, and its events,
having the same ids, count once. A finished run deletes its cursors.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

import redis

from rules.events import format_ms
from rules.hubspot_history import (
    OWNER_PROPERTY,
    Mapped,
    contact_events,
    deal_history_events,
    engagement_record_events,
)
from rules.hubspot_map import ENGAGEMENT_PROPERTIES, HubSpotMapping, contact_properties
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_history import OWNER_FIELD, record_events
from rules.salesforce_ids import to_18
from rules.salesforce_map import record_fields
from worker.backfill_sinks import Sink
from worker.crm.hubspot_backfill import HubSpotHistory
from worker.crm.salesforce_backfill import SalesforceHistory
from worker.crm.salesforce_bulk import BulkHistory

CRM = "hubspot"
CURSOR_TTL_S = 30 * 86_400  # an abandoned run's cursors go away on their own
LIST_TYPES = ("contacts", "deals")
SEARCH_TYPES = ("calls", "emails", "meetings")
OBJECT_TYPES = LIST_TYPES + SEARCH_TYPES
# Salesforce: the facts first (as HubSpot's contacts and deals), then the activities.
SALESFORCE_TYPES = ("Lead", "Opportunity", "Individual", "Task", "Event")
SALESFORCE_STATE_TYPES = frozenset({"Lead", "Opportunity", "Individual"})  # read whatever their age
BULK_ABOVE = 10_000  # records in an object's window from which `--bulk auto` reads it by a Bulk API job


@dataclass(frozen=True)
class Window:
    """The backfill's time window: history from `since_ms` (inclusive) to `until_ms` (exclusive)."""

    since_ms: int
    until_ms: int

    def __post_init__(self) -> None:
        if self.since_ms >= self.until_ms:
            raise ValueError(f"--since must be before --until, got {format_ms(self.since_ms)} and "
                             f"{format_ms(self.until_ms)}")  # fmt: skip


class Cursors:
    """Where each object type's reading got to, for one run (window and destination), in Redis."""

    def __init__(self, connection: redis.Redis, window: Window, destination: str, crm: str = CRM) -> None:
        run = hashlib.sha256(f"{window.since_ms}:{window.until_ms}:{destination}".encode()).hexdigest()[:16]
        self.redis = connection
        self.key = f"pruner:backfill:{crm}:{run}"

    def load(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes | str, bytes | str] = self.redis.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    def save(self, object_type: str, cursor: dict[str, Any]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, object_type, json.dumps(cursor, separators=(",", ":")))
            pipe.expire(self.key, CURSOR_TTL_S)
            pipe.execute()

    def clear(self) -> None:
        self.redis.delete(self.key)


@dataclass
class Tally:
    """What a backfill read and produced (counts and ids only, never personal data)."""

    records: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    leads: set[str] = field(default_factory=set)
    owners: Counter[str] = field(default_factory=Counter)  # contacts per owner id
    ignored: Counter[str] = field(default_factory=Counter)
    resumed: list[str] = field(default_factory=list)  # object types continued from a cursor
    bulk: list[str] = field(default_factory=list)  # object types read by a Bulk API 2.0 job (Salesforce)
    # Contact id -> owner id (ids only), for the dry run's tasks per owner (worker/firstrun.py).
    contact_owner: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "records": dict(self.records),
            "events": dict(sorted(self.events.items())),
            "events_total": sum(self.events.values()),
            "leads": len(self.leads),
            "contacts_per_owner": dict(self.owners.most_common()),
            "ignored": dict(self.ignored.most_common()),
            "resumed": self.resumed,
            **({"bulk": self.bulk} if self.bulk else {}),
        }


# Called after each page: (object type, records of that type so far, events so far, records left or None).
ProgressFn = Callable[[str, int, int, int | None], None]


class ProgressLine:
    """One line on a TTY: the object type being read, records fetched, events produced, ETA when known."""

    def __init__(self, stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.started: dict[str, tuple[float, int]] = {}

    def __call__(self, object_type: str, records: int, events: int, left: int | None) -> None:
        if not self.live:
            return
        now = self.clock()
        began, first = self.started.setdefault(object_type, (now, records))
        eta = ""
        rate = (records - first) / (now - began) if now > began else 0.0
        if left is not None and rate > 0:
            eta = f", ETA {int(left / rate)} s"
        print(f"\r\x1b[Kbackfill: {object_type} {records:,} fetched, {events:,} events{eta}",
              end="", file=self.stream, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.live:
            print(file=self.stream)


HistoryT = TypeVar("HistoryT")
MappingT = TypeVar("MappingT")


class Run(Generic[HistoryT, MappingT]):
    """One backfill run of any CRM: read each object type from its cursor, map, send to the sink, move the cursor.

    A CRM's run says which object types it reads (`object_types`) and how (`read`), with its
    reader (`history`) and its mapping; this class owns the order, the cursors, the sink and the tally.
    """

    object_types: tuple[str, ...] = ()

    def __init__(
        self,
        history: HistoryT,
        sink: Sink,
        window: Window,
        mapping: MappingT,
        cursors: Cursors | None = None,
        clock: Callable[[], float] = time.time,
        progress: ProgressFn | None = None,
    ) -> None:
        self.history = history
        self.mapping = mapping
        self.sink = sink
        self.window = window
        self.cursors = cursors
        self.now_ms = int(clock() * 1000)
        self.progress = progress
        self.tally = Tally()
        self._events = 0

    def run(self, object_types: Sequence[str] | None = None) -> Tally:
        """Read every object type (continuing from the cursors); delete the cursors when all are done."""
        saved = self.cursors.load() if self.cursors is not None else {}
        try:
            for object_type in object_types or self.object_types:
                cursor = saved.get(object_type) or {}
                if cursor:
                    self.tally.resumed.append(object_type)
                if not cursor.get("done"):
                    self.read(object_type, cursor)
        finally:
            # Also when interrupted: the file is closed, events held back are queued. What the
            # cursors do not cover yet is read again on resume, under the same ids.
            self.sink.close()
        if self.cursors is not None:
            self.cursors.clear()
        return self.tally

    def read(self, object_type: str, cursor: dict[str, Any]) -> None:
        """Read one object type from `cursor` (empty: from the start), `_emit` each page, save the cursor done."""
        raise NotImplementedError

    def _emit(self, object_type: str, records: int, out: Mapped, cursor: dict[str, Any], left: int | None) -> None:
        self.sink.write(out.events)
        self.sink.commit()
        if self.cursors is not None:
            self.cursors.save(object_type, cursor)
        self.tally.records[object_type] += records
        self.tally.events.update(item.event.type.value for item in out.events)
        self.tally.leads.update(item.event.lead_id for item in out.events)
        self.tally.ignored.update(out.ignored)
        self._events += len(out.events)
        if self.progress is not None:
            self.progress(object_type, self.tally.records[object_type], self._events, left)


class Backfill(Run[HubSpotHistory, HubSpotMapping]):
    """A HubSpot backfill: contacts and deals with their property history, then engagements."""

    object_types = OBJECT_TYPES

    def read(self, object_type: str, cursor: dict[str, Any]) -> None:
        if object_type == "contacts":
            self._contacts(cursor.get("after"))
        elif object_type == "deals":
            self._deals(cursor.get("after"))
        else:
            self._engagements(object_type, int(cursor.get("from_ms", self.window.since_ms)))

    def _contacts(self, after: str | None) -> None:
        names = contact_properties(self.mapping)
        w = self.window
        while True:
            page = self.history.list_page("contacts", [*names, OWNER_PROPERTY], names, after)
            out = Mapped()
            for record in page.records:
                contact_events(record, w.since_ms, w.until_ms, self.now_ms, self.mapping, out)
                owner = (record.get("properties") or {}).get(OWNER_PROPERTY)
                self.tally.owners[str(owner) if owner else "none"] += 1
                if owner:
                    self.tally.contact_owner[str(record["id"])] = str(owner)
            after = page.after
            self._emit("contacts", len(page.records), out, {"after": after, "done": after is None}, None)
            if after is None:
                return

    def _deals(self, after: str | None) -> None:
        names = sorted(self.mapping.deal_properties)
        w = self.window
        while True:
            page = self.history.list_page("deals", names, names, after)
            contacts = self.history.contacts_of("deals", [str(r["id"]) for r in page.records])
            out = Mapped()
            for record in page.records:
                deal_history_events(record, contacts[str(record["id"])], w.since_ms, w.until_ms, self.mapping, out)
            after = page.after
            self._emit("deals", len(page.records), out, {"after": after, "done": after is None}, None)
            if after is None:
                return

    def _engagements(self, object_type: str, from_ms: int) -> None:
        pages = self.history.search_with_contacts(object_type, ENGAGEMENT_PROPERTIES[object_type], from_ms,
                                                  self.window.until_ms)  # fmt: skip
        for page, contacts in pages:
            out = Mapped()
            for record in page.records:
                engagement_record_events(object_type, record, contacts[str(record["id"])], self.mapping, out)
            self._emit(object_type, len(page.records), out, {"from_ms": page.resume_ms}, page.left)
        if self.cursors is not None:
            self.cursors.save(object_type, {"done": True})


@dataclass(frozen=True)
class BulkChoice:
    """When a Salesforce backfill reads an object by a Bulk API 2.0 job rather than by REST SOQL pages.

    `auto` counts each object's window first (`SELECT COUNT()`, one request) and takes Bulk from
    `above` records: below it, a few REST pages cost fewer requests than a job's create, status
    reads and result sets, and give their records at once.
    """

    mode: str = "auto"  # auto | always | never
    above: int = BULK_ABOVE

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "always", "never"):
            raise ValueError(f"bulk mode must be auto, always or never, got {self.mode!r}")


class SalesforceBackfill(Run[SalesforceHistory, SalesforceMapping]):
    """A Salesforce backfill: each sObject the mapping knows, read by SOQL and mapped like its outbound messages.

    Leads, Opportunities and Individuals hold facts in force whatever their age (an opt-out,
    a won deal), so every one last changed before `until` is read, as HubSpot's contacts are
    read whatever the window; Tasks and Events are activities, read when they changed inside
    the window. A field the org lacks is left out of the query (and counted); an object the
    org lacks, or lacking the field that links it to a lead, is skipped (and counted).
    """

    object_types = SALESFORCE_TYPES

    def __init__(
        self, *args: Any, bulk: BulkHistory | None = None, bulk_choice: BulkChoice | None = None, **kwargs: Any
    ) -> None:
        """`Run`'s arguments; `bulk`: the Bulk API 2.0 reader (None: REST only), used as `bulk_choice` says."""
        super().__init__(*args, **kwargs)
        self.bulk = bulk
        self.bulk_choice = bulk_choice or BulkChoice()

    def read(self, object_type: str, cursor: dict[str, Any]) -> None:
        fields = self._fields(object_type)
        if fields is not None:
            start = None if object_type in SALESFORCE_STATE_TYPES else self.window.since_ms
            from_ms, until_ms, seen = cursor.get("from_ms", start), self.window.until_ms, cursor.get("seen", ())
            if self.bulk is not None and self._bulk_for(object_type, cursor, from_ms):
                self.tally.bulk.append(object_type)
                pages = self.bulk.read(object_type, fields, from_ms, until_ms, seen, cursor.get("bulk"))
            else:
                pages = self.history.read(object_type, fields, from_ms, until_ms, seen)
            for page in pages:
                out = Mapped()
                record_events(object_type, page.records, self.now_ms, self.mapping, out)
                if object_type == "Lead":
                    for record in page.records:
                        owner = record.get(OWNER_FIELD)
                        self.tally.owners[str(owner) if owner else "none"] += 1
                        if owner:
                            self.tally.contact_owner[to_18(str(record["Id"]))] = str(owner)
                self._emit(object_type, len(page.records), out, page.resume, page.left)
        if self.cursors is not None:
            self.cursors.save(object_type, {"done": True})

    def _bulk_for(self, sobject: str, cursor: dict[str, Any], from_ms: int | None) -> bool:
        """Whether to read `sobject` by a Bulk API 2.0 job: `--bulk always`, or `auto` and a large count."""
        choice = self.bulk_choice
        if choice.mode == "never":
            return False
        if "bulk" in cursor or choice.mode == "always":
            return True  # a stopped bulk read goes on with its job (unless told never)
        if cursor.get("seen"):
            return False  # a stopped REST read goes on where it got to, without counting again
        return self.history.count(sobject, from_ms, self.window.until_ms) >= choice.above

    def _fields(self, sobject: str) -> list[str] | None:
        extra = [OWNER_FIELD] if sobject == "Lead" else []
        return readable_fields(self.history, sobject, self.mapping, self.tally.ignored, extra)


def readable_fields(
    history: SalesforceHistory, sobject: str, m: SalesforceMapping, ignored: Counter[str], extra: Sequence[str] = ()
) -> list[str] | None:
    """The mapping's fields of `sobject` (and `extra`) that the org has; None when there is nothing to read.

    What the org lacks is counted in `ignored`: a SOQL query naming a missing field is refused whole.
    """
    described = history.describe(sobject)
    if described is None:
        ignored[f"{sobject}:not_in_org"] += 1
        return None
    links = {"Task": "WhoId", "Event": "WhoId", "Opportunity": m.opportunity_lead_field,
             "Individual": m.individual_lead_field}  # fmt: skip
    link = links.get(sobject)
    if link is not None and link not in described:
        ignored[f"{sobject}:no_field:{link}"] += 1  # no record of it can name its lead
        return None
    wanted = [*record_fields(sobject, m), *extra]
    for name in wanted:
        if name not in described:
            ignored[f"{sobject}:no_field:{name}"] += 1
    return [name for name in wanted if name in described]
