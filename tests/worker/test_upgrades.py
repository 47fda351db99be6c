"""One-time upgrades of a store written by an earlier version (worker/upgrades.py)."""

from __future__ import annotations

import fakeredis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.queues import make_queue
from worker.store import LeadStore
from worker.upgrades import BREAKUP_CLOCK_MARKER, record_existing_breakup_tasks

P = default_policy()
DAY = 86_400_000


def silent(lead: str) -> list[Event]:
    """Fifteen unanswered emails: BREAKUP_DUE on the 13th."""
    return [Event(f"{lead}-{i}", EventType.EMAIL_SENT, Crm.HUBSPOT, lead, at(0) + i * 60_000, {}) for i in range(15)]


def test_leads_in_breakup_due_before_the_task_clock_keep_the_grace_they_had() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    # Decided by an earlier version (grace from the decision), still inside their grace.
    store.apply_batch(silent("OLD"), Decider(P, at(1)))
    # Decided since, live: its task was recorded by the drain.
    store.apply_batch(silent("NEW"), Decider(P, at(1), grace_from_task=True))
    task = Event("t", EventType.BREAKUP_TASK_CREATED, Crm.HUBSPOT, "NEW", at(2), {})
    store.apply_batch([task], Decider(P, at(2), grace_from_task=True))
    queue = make_queue(conn)

    assert record_existing_breakup_tasks(conn, queue) == 1  # OLD only: NEW has its task
    assert record_existing_breakup_tasks(conn, queue) == 0 and conn.exists(BREAKUP_CLOCK_MARKER)
    [job] = queue.jobs
    events = [Event.from_wire(w) for w in job.args[0]]
    assert [(e.type, e.lead_id) for e in events] == [(EventType.BREAKUP_TASK_CREATED, "OLD")]
    later = at(30)
    store.apply_batch(events, Decider(P, later, grace_from_task=True))
    # Without the upgrade OLD would wait in BREAKUP_DUE for a task that was created long ago.
    assert (store.state("hubspot", "OLD") or {})["state"] == "LOST"
    assert (store.state("hubspot", "OLD") or {})["decisions"][-1]["rule"] == "breakup_grace"
    # Applying the same upgrade twice (two workers starting together) changes nothing.
    again = store.apply_batch(events, Decider(P, later, grace_from_task=True))
    assert again.added == 0
