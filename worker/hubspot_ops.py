"""Carry out the HubSpot operations a webhook batch could not map by itself (rules/hubspot_map.py).

- `engagement`: a thin `object.creation` of a call, email or meeting: fetch it with its
  contact associations and map it to canonical events.
- `deal`: a deal's stage or amount changed: fetch its contacts, one `deal_updated` each.
- `merge`: fold merged contacts' histories into the surviving contact.
- `forget`: the contact was deleted in HubSpot: drop its state, later (see below).
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from datetime import timedelta
from typing import Any, NamedTuple, Protocol

import redis

from rules.events import Event
from rules.hubspot_map import ENGAGEMENT_PROPERTIES, HubSpotMapping, HubSpotOp, deal_events, engagement_events
from worker.action import Action
from worker.config import Config
from worker.crm.hubspot_responses import HubSpotNotFound
from worker.leadview import Decide
from worker.store import LeadStore

log = logging.getLogger(__name__)

# HubSpot fires contact.privacyDeletion and contact.deletion in any order, in different
# batches. Forgetting at once could lose the email before the erasure hashes it, so a
# deletion is carried out this much later.
FORGET_DELAY = timedelta(minutes=15)


class HubSpotReader(Protocol):
    def get_object(
        self, object_type: str, object_id: str, properties: list[str], associations: list[str]
    ) -> dict[str, Any]: ...

    def associated_ids(self, from_type: str, object_id: str, to_type: str) -> list[str]: ...


def hubspot_reader(config: Config, connection: redis.Redis) -> HubSpotReader:
    """Return the HubSpot API client (worker/crm/hubspot_client.py) used to fetch thin events."""
    module = importlib.import_module("worker.crm.hubspot_client")
    client: HubSpotReader = module.build_client(config, connection)
    return client


def _contacts(record: dict[str, Any]) -> list[str]:
    results = ((record.get("associations") or {}).get("contacts") or {}).get("results") or []
    return sorted({str(r.get("id") or r.get("toObjectId")) for r in results if r.get("id") or r.get("toObjectId")})


def fetch_events(ops: list[HubSpotOp], reader: HubSpotReader, mapping: HubSpotMapping | None = None) -> list[Event]:
    """Resolve `engagement` and `deal` operations into canonical events via the API.

    A record deleted in HubSpot since the webhook fired is skipped: retrying cannot bring it
    back, and failing would hold the batch's other events (an opt-out, say) back for good.
    Any other error propagates, so RQ retries the job while HubSpot is unavailable.
    """
    events: list[Event] = []
    gone: Counter[str] = Counter()
    for op in ops:
        try:
            events += _fetch_one(op, reader, mapping)
        except HubSpotNotFound:
            gone[op["op"]] += 1
    if gone:
        # Counts only: record ids would tie the log line to a person.
        log.info("hubspot records gone before they were fetched, skipped: %s", dict(gone))
    return events


def _fetch_one(op: HubSpotOp, reader: HubSpotReader, mapping: HubSpotMapping | None) -> list[Event]:
    if op["op"] == "engagement":
        kind = op["object_type"]
        record = reader.get_object(kind, op["object_id"], list(ENGAGEMENT_PROPERTIES[kind]), ["contacts"])
        return engagement_events(kind, record, _contacts(record), int(op["at"]), mapping)
    if op["op"] == "deal":
        return deal_events(op, reader.associated_ids("deals", op["deal_id"], "contacts"))
    return []


class StoreOps(NamedTuple):
    """What merges did: leads they erased (to purge from payloads), actions they queued (to drain)."""

    erased: list[tuple[str, str]]
    actions: list[Action]


def apply_store_ops(ops: list[HubSpotOp], store: LeadStore, decide: Decide, queue: Any) -> StoreOps:
    """Carry out merges now and schedule forgets.

    Call it after the batch's events are stored, so a merge folds in what the same batch
    said about the merged records (an opt-out on the record merged away must reach the
    survivor). A merge erases when the survivor was erased already, or when the merged
    histories hold an erasure request: the caller then purges those leads from queued
    payloads, as it does for erasures in the batch.
    """
    done = StoreOps([], [])
    for op in ops:
        if op["op"] == "merge":
            update = store.merge(op["crm"], op["into"], list(op["merged"]), decide)
            if update is not None and update.outcome is not None:
                done.actions.extend(update.outcome.actions)
                if update.outcome.erase:
                    gone = dict.fromkeys([op["into"], *op["merged"], *update.aliases])
                    done.erased.extend((op["crm"], lead) for lead in gone)
        elif op["op"] == "forget":
            queue.enqueue_in(
                FORGET_DELAY,
                "worker.jobs.forget_lead",
                args=(op["crm"], op["lead_id"]),
                result_ttl=0,
                description="forget_lead: a contact deleted in the CRM",
            )
    return done
