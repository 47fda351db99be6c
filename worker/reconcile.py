"""Continuous reconciliation: what the CRMs changed lately, read back in case a webhook never came.

Webhooks get lost: an outage longer than HubSpot's retries, a subscription someone turned off,
a portal setting. Every `PRUNER_RECONCILE_MINUTES` (default 15; 0: off) the clock queues
`worker.jobs.reconcile`, which searches the calls, emails and meetings whose
`hs_lastmodifieddate` falls since the last run (a few minutes of overlap, and a minute of
slack for HubSpot's search index), maps them with the webhooks' own code and event ids
(rules/hubspot_history.py), and applies them like any batch. What the webhooks already
delivered is a duplicate and changes nothing; what they missed is added, and counted:
`pruner_reconciled_events_total` above zero means webhooks are missing something.

Salesforce likewise (`reconcile_salesforce`): every Lead, Task, Event, Opportunity and
Individual whose `SystemModstamp` falls since the last run, read by SOQL as the backfill reads
them and mapped by the Outbound Message mapping, whose event ids are the record and its
`LastModifiedDate`: an outbound message delivered for that version is the same event.

HubSpot contacts and deals too: those whose `lastmodifieddate` (contacts) or
`hs_lastmodifieddate` (deals) falls since the last run are read back by id with the history of
the properties the mapping reads, a deal with its contacts, and each property change since the
last run goes through the backfill's mapping (rules/hubspot_history.py). A webhook keys such a
change on (record, property, `occurredAt`), the backfill on (record, property, the version's
`timestamp`): the same id, so a delivered change is a duplicate here (docs/crm.md).
The search for them has no upper bound: a record changed again since the window closed still
shows, so a change inside the window is read even when a later one moved the record's
modification date past it. Every search here pages by time, not offset (`keyset`): a record
changed during the run is read twice rather than pushing another out of sight.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from rules.events import MAX_EVENTS_PER_BATCH, Event, format_ms
from rules.hubspot_history import Mapped, contact_events, deal_history_events, engagement_record_events
from rules.hubspot_map import ENGAGEMENT_PROPERTIES, HubSpotMapping, contact_properties
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_history import record_events
from rules.salesforce_map import SOBJECTS
from worker.action import Action
from worker.backfill import readable_fields
from worker.crm.hubspot_backfill import HubSpotHistory
from worker.crm.salesforce_backfill import SalesforceHistory
from worker.keys import Lead
from worker.leadview import Decide
from worker.metrics import RECONCILED_KEY
from worker.store import LeadStore

log = logging.getLogger(__name__)

CURSOR_KEY = "pruner:reconcile:hubspot"  # epoch ms up to which changes were read
SALESFORCE_CURSOR_KEY = "pruner:reconcile:salesforce"
MODIFIED = "hs_lastmodifieddate"
ENGAGEMENTS = ("calls", "emails", "meetings")
# HubSpot's modification date property per record type: contacts have their own name for it.
RECORD_MODIFIED = {"contacts": "lastmodifieddate", "deals": MODIFIED}
# How far past now the contact and deal search reaches (no upper bound, in effect; see the docstring).
OPEN_END_MS = 24 * 60 * 60_000
OVERLAP_MS = 5 * 60_000  # read again: a change indexed late, or a run that died before its cursor moved
INDEX_SLACK_MS = 60_000  # HubSpot's search sees a change a little after it is made
FIRST_LOOK_BACK_MS = 60 * 60_000  # the first run, without a cursor: the last hour


@dataclass
class Reconciled:
    since_ms: int
    until_ms: int
    records: int = 0
    added: dict[str, int] = field(default_factory=dict)  # object type -> events the webhooks had missed
    erased: list[Lead] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


def reconcile_hubspot(
    connection: redis.Redis,
    history: HubSpotHistory,
    store: LeadStore,
    decide: Decide,
    mapping: HubSpotMapping,
    now_ms: int,
) -> Reconciled:
    """Read the engagements changed since the cursor, apply them, move the cursor; count what was new."""

    def pages(since: int, until: int) -> Iterator[tuple[str, int, Mapped]]:
        for object_type in ENGAGEMENTS:
            properties = ENGAGEMENT_PROPERTIES[object_type]
            for page, contacts in history.search_with_contacts(
                object_type, properties, since, until, by=MODIFIED, keyset=True
            ):
                mapped = Mapped()
                for record in page.records:
                    engagement_record_events(object_type, record, contacts[str(record["id"])], mapping, mapped)
                yield object_type, len(page.records), mapped
        for object_type in RECORD_MODIFIED:
            yield from _record_pages(history, object_type, since, until, mapping, now_ms)

    return _reconcile(connection, CURSOR_KEY, now_ms, store, decide, pages)


def _record_pages(
    history: HubSpotHistory, object_type: str, since: int, until: int, mapping: HubSpotMapping, now_ms: int
) -> Iterator[tuple[str, int, Mapped]]:
    """Contacts or deals changed since `since`, read back with their history; the changes in [since, until) mapped."""
    by = RECORD_MODIFIED[object_type]
    names = contact_properties(mapping) if object_type == "contacts" else sorted(mapping.deal_properties)
    for page in history.search_window(object_type, [], since, now_ms + OPEN_END_MS, by=by, keyset=True):
        ids = [str(r["id"]) for r in page.records]
        records = history.read_history(object_type, ids, names, names)
        mapped = Mapped()
        if object_type == "contacts":
            for record in records:
                contact_events(record, since, until, now_ms, mapping, mapped, prior=False)
        else:
            contacts = history.contacts_of("deals", [str(r["id"]) for r in records])
            for record in records:
                deal_history_events(record, contacts[str(record["id"])], since, until, mapping, mapped, prior=False)
        yield object_type, len(records), mapped


def reconcile_salesforce(
    connection: redis.Redis,
    history: SalesforceHistory,
    store: LeadStore,
    decide: Decide,
    mapping: SalesforceMapping,
    now_ms: int,
) -> Reconciled:
    """Read the records Salesforce changed since the cursor, apply them, move the cursor; count what was new."""

    def pages(since: int, until: int) -> Iterator[tuple[str, int, Mapped]]:
        ignored: Counter[str] = Counter()  # fields or objects this org lacks: the backfill reports them
        for sobject in SOBJECTS:
            fields = readable_fields(history, sobject, mapping, ignored)
            if fields is None:
                continue
            for page in history.read(sobject, fields, since, until):
                mapped = Mapped()
                record_events(sobject, page.records, now_ms, mapping, mapped)
                yield sobject, len(page.records), mapped

    return _reconcile(connection, SALESFORCE_CURSOR_KEY, now_ms, store, decide, pages)


def _reconcile(
    connection: redis.Redis,
    cursor_key: str,
    now_ms: int,
    store: LeadStore,
    decide: Decide,
    pages: Callable[[int, int], Iterator[tuple[str, int, Mapped]]],
) -> Reconciled:
    """One CRM's run: the window from its cursor, each page of (object type, records read, events) applied."""
    out = _window(connection, cursor_key, now_ms)
    if out.since_ms >= out.until_ms:
        return out
    for label, records, mapped in pages(out.since_ms, out.until_ms):
        out.records += records
        _apply(store, decide, mapped, label, out)
    return _finish(connection, cursor_key, out)


def _window(connection: redis.Redis, cursor_key: str, now_ms: int) -> Reconciled:
    """The window to read: from the cursor (less the overlap; the last hour the first time) to now, less the slack."""
    raw = connection.get(cursor_key)
    until = now_ms - INDEX_SLACK_MS
    since = int(raw) - OVERLAP_MS if raw else until - FIRST_LOOK_BACK_MS
    return Reconciled(since, until)


def _apply(store: LeadStore, decide: Decide, mapped: Mapped, label: str, out: Reconciled) -> None:
    """Apply one page's events like any batch; count the ones no webhook had delivered under `label`."""
    events: list[Event] = [item.event for item in mapped.events]
    for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
        result = store.apply_batch(events[start : start + MAX_EVENTS_PER_BATCH], decide)
        out.added[label] = out.added.get(label, 0) + result.added
        out.erased += result.erased
        out.actions += result.actions


def _finish(connection: redis.Redis, cursor_key: str, out: Reconciled) -> Reconciled:
    """Move the cursor and count what was recovered, in one transaction; warn when something was."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.set(cursor_key, out.until_ms)
        for label, n in out.added.items():
            if n:
                pipe.hincrby(RECONCILED_KEY, label, n)
        pipe.execute()
    recovered = sum(out.added.values())
    if recovered:
        # Not an error of Pruner's, but worth an operator's look: webhooks are not all arriving.
        log.warning("reconciliation %s..%s recovered %d events the webhooks had not delivered",
                    format_ms(out.since_ms), format_ms(out.until_ms), recovered)  # fmt: skip
    return out
