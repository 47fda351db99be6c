"""One lead as operators see it: the `/leads/<crm>/<id>` document, also printed by `pruner explain`.

Here rather than in the web's admin routes so that the CLI, below the web, reads the same thing.
"""

from __future__ import annotations

from typing import Any

import redis

from rules.events import format_ms
from worker.checkpoint import UNKNOWN, Stored
from worker.eventlog import Log
from worker.staterecord import StateRecord
from worker.suppression import SUPPRESSED_KEY, lead_hash


def is_erased(connection: redis.Redis, key: bytes, crm: str, lead_id: str) -> bool:
    """Say whether this lead was erased (its keyed hash is on the suppression list)."""
    return bool(connection.sismember(SUPPRESSED_KEY, lead_hash(key, crm, lead_id)))


def lead_document(
    crm: str, lead_id: str, log: Log, state: StateRecord | None, checkpoint: Stored | None = None
) -> dict[str, Any]:
    """Build the docs/http.md `/leads/<crm>/<lead_id>` answer (also printed by `pruner explain --format json`).

    `progress`: how far the lead is from each count-based rule, as its last evaluation
    counted (empty for a lead not evaluated since the upgrade to checkpoints). The counters
    cover the whole story, the log's fold included.
    """
    counters = log.counters()
    folded = log.fold.events if log.fold is not None else 0
    state = state or {}
    return {
        "crm": crm,
        "lead_id": lead_id,
        "state": state.get("state", "ACTIVE"),
        "loss_reason": state.get("loss_reason"),
        "counters": counters.public(),
        "decisions": state.get("decisions", []),
        "next_due": _next_due(state, checkpoint),
        "events": folded + len(log.events),
        # Of those, how many are past the retention horizon: counted in, no longer kept one by one.
        "events_folded": folded,
        "last_event_at": format_ms(counters.last_event_ms) if counters.last_event_ms is not None else None,
        "profile": {"source": counters.source, "segment": counters.segment, "priority": counters.priority},
        "progress": checkpoint.progress if checkpoint is not None else {},
    }


def _next_due(state: StateRecord, checkpoint: Stored | None) -> str | None:
    """The lead's next due time: its checkpoint's, or the state record's when written before 2026-12-05."""
    if checkpoint is None or checkpoint.due == UNKNOWN:
        return state.get("next_due")
    return format_ms(checkpoint.due) if checkpoint.due is not None else None
