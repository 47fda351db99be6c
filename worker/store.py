"""The Redis lead store: one packed event log per lead, written atomically.

A batch is applied in three round trips whatever its size: WATCH the touched
leads, MGET their logs, then MULTI/SET/EXEC the logs that gained events. When
another worker changed one of those leads in between, EXEC fails and the batch is
re-read and re-applied — nothing is lost and nothing counted twice. Counters are
folded from the log (`rules.counters.fold`), never incremented in place, so they
are the same whatever order events arrived in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from rules.counters import LoggedEvent
from rules.events import Event
from worker import eventlog
from worker.errors import StoreError

log = logging.getLogger(__name__)

PREFIX = "pruner:lead:"
MAX_ATTEMPTS = 50


def lead_key(crm: str, lead_id: str) -> str:
    """Return the Redis key holding one lead's event log."""
    return f"{PREFIX}{crm}:{lead_id}"


@dataclass(frozen=True)
class LeadUpdate:
    """What one batch did to one lead: its whole history after the batch."""

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    added: int
    duplicates: int


@dataclass(frozen=True)
class BatchResult:
    leads: list[LeadUpdate]

    @property
    def added(self) -> int:
        return sum(u.added for u in self.leads)

    @property
    def duplicates(self) -> int:
        return sum(u.duplicates for u in self.leads)


class LeadStore:
    """Per-lead event histories in Redis (connection passed in)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection

    def apply_batch(self, events: Iterable[Event]) -> BatchResult:
        """Add a batch of events to their leads' logs, once each, atomically per batch."""
        by_lead: dict[tuple[str, str], dict[bytes, LoggedEvent]] = {}
        received: dict[tuple[str, str], int] = {}
        for event in events:
            lead = (event.crm.value, event.lead_id)
            logged = eventlog.to_logged(event)
            by_lead.setdefault(lead, {}).setdefault(logged.key, logged)
            received[lead] = received.get(lead, 0) + 1
        leads = list(by_lead)
        keys = [lead_key(crm, lead_id) for crm, lead_id in leads]
        if not keys:
            return BatchResult([])
        for _attempt in range(MAX_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*keys)
                    blobs: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
                    writes: dict[str, bytes] = {}
                    updates = []
                    for (crm, lead_id), key, blob in zip(leads, keys, blobs, strict=True):
                        present = eventlog.keys(blob)
                        fresh = [ev for k, ev in by_lead[(crm, lead_id)].items() if k not in present]
                        dups = received[(crm, lead_id)] - len(fresh)
                        if fresh:
                            writes[key] = eventlog.append(blob, fresh)
                        history = eventlog.decode(writes.get(key, blob))
                        updates.append(LeadUpdate(crm, lead_id, history, len(fresh), dups))
                    pipe.multi()
                    if writes:
                        pipe.mset(writes)
                    pipe.execute()
                except redis.WatchError:
                    continue
            return BatchResult(updates)
        raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts on {len(keys)} leads")

    def history(self, crm: str, lead_id: str) -> list[LoggedEvent] | None:
        """Return a lead's event log, or None when the lead is unknown."""
        blob = self.redis.get(lead_key(crm, lead_id))
        return None if blob is None else eventlog.decode(blob)  # type: ignore[arg-type]
