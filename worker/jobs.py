"""RQ job functions: module-level, plain-JSON arguments, clients from the job's connection."""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job

from rules.events import Event
from worker.store import LeadStore

log = logging.getLogger(__name__)


def process_events(events: list[list[Any]], source: str = "events") -> dict[str, int]:
    """Apply one queued batch of canonical events to the lead store."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("process_events must run inside an RQ job")
    store = LeadStore(job.connection)
    result = store.apply_batch(Event.from_wire(item) for item in events)
    log.info(
        "batch applied source=%s events=%d leads=%d added=%d duplicates=%d",
        source,
        len(events),
        len(result.leads),
        result.added,
        result.duplicates,
    )
    return {"events": len(events), "leads": len(result.leads), "added": result.added, "duplicates": result.duplicates}


def sweep(now_ms: int | None = None) -> dict[str, int]:
    """Evaluate time-based rules for leads that are due (rules land in issue 3)."""
    log.info("sweep ran now_ms=%s due=0", now_ms)
    return {"due": 0}
