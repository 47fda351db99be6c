"""Continuous reconciliation: the engagements HubSpot changed lately, read back in case a webhook never came.

Webhooks get lost: an outage longer than HubSpot's retries, a subscription someone turned off,
a portal setting. Every `PRUNER_RECONCILE_MINUTES` (default 15; 0: off) the clock queues
`worker.jobs.reconcile`, which searches the calls, emails and meetings whose
`hs_lastmodifieddate` falls since the last run (a few minutes of overlap, and a minute of
slack for HubSpot's search index), maps them with the webhooks' own code and event ids
(rules/hubspot_history.py), and applies them like any batch. What the webhooks already
delivered is a duplicate and changes nothing; what they missed is added, and counted:
`pruner_reconciled_events_total` above zero means webhooks are missing something.

Contacts and deals are not reconciled yet: their changes need the property history of
each changed record (issue #14).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from rules.events import MAX_EVENTS_PER_BATCH, Event, format_ms
from rules.hubspot_history import Mapped, engagement_record_events
from rules.hubspot_map import ENGAGEMENT_PROPERTIES, HubSpotMapping
from worker.action import Action
from worker.crm.hubspot_backfill import HubSpotHistory
from worker.keys import Lead
from worker.leadview import Decide
from worker.metrics import RECONCILED_KEY
from worker.store import LeadStore

log = logging.getLogger(__name__)

CURSOR_KEY = "pruner:reconcile:hubspot"  # epoch ms up to which changes were read
MODIFIED = "hs_lastmodifieddate"
ENGAGEMENTS = ("calls", "emails", "meetings")
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
    raw = connection.get(CURSOR_KEY)
    until = now_ms - INDEX_SLACK_MS
    since = int(raw) - OVERLAP_MS if raw else until - FIRST_LOOK_BACK_MS
    out = Reconciled(since, until)
    if since >= until:
        return out
    for object_type in ENGAGEMENTS:
        for page in history.search_window(object_type, ENGAGEMENT_PROPERTIES[object_type], since, until, by=MODIFIED):
            contacts = history.contacts_of(object_type, [str(r["id"]) for r in page.records])
            mapped = Mapped()
            for record in page.records:
                engagement_record_events(object_type, record, contacts[str(record["id"])], mapping, mapped)
            out.records += len(page.records)
            events: list[Event] = [item.event for item in mapped.events]
            for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
                result = store.apply_batch(events[start : start + MAX_EVENTS_PER_BATCH], decide)
                out.added[object_type] = out.added.get(object_type, 0) + result.added
                out.erased += result.erased
                out.actions += result.actions
    with connection.pipeline(transaction=True) as pipe:
        pipe.set(CURSOR_KEY, until)
        for object_type, n in out.added.items():
            if n:
                pipe.hincrby(RECONCILED_KEY, object_type, n)
        pipe.execute()
    recovered = sum(out.added.values())
    if recovered:
        # Not an error of Pruner's, but worth an operator's look: webhooks are not all arriving.
        log.warning("reconciliation %s..%s recovered %d events the webhooks had not delivered",
                    format_ms(since), format_ms(until), recovered)  # fmt: skip
    return out
