"""One-time upgrades of a store written by an earlier version (worker/upgrades.py)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
from rq import Queue

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker.decide import Decider
from worker.keys import DUE_KEY
from worker.policyfile import default_policy
from worker.queues import make_queue
from worker.store import LeadStore
from worker.upgrades import BREAKUP_CLOCK_MARKER, note_dry_run, record_existing_breakup_tasks, release_after_dry_run

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
    conn.delete("pruner:outbox:hubspot")  # drained: OLD's by a version that recorded no task
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


def queued(queue: Queue) -> list[Event]:
    return [Event.from_wire(w) for job in queue.jobs for w in job.args[0]]


def test_leads_lost_before_the_task_clock_stay_lost_as_they_were() -> None:
    """Review finding 1: a lead lost by its grace before the switch came back to BREAKUP_DUE for good."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(silent("GONE"), Decider(P, at(1)))
    store.reevaluate(store.due(at(40), 10), Decider(P, at(40)))  # lost by its grace, then due a check-in
    conn.delete("pruner:outbox:hubspot")  # drained by a version that recorded no task
    before = store.state("hubspot", "GONE") or {}
    assert [d["rule"] for d in before["decisions"]] == ["unresponsive", "breakup_grace"]

    queue = make_queue(conn)
    assert record_existing_breakup_tasks(conn, queue) == 1
    [task] = queued(queue)
    assert task.occurred_ms == at(0) + 12 * 60_000 and task.data == {"decision_at": before["decisions"][0]["at"]}
    store.apply_batch([task], Decider(P, at(41), grace_from_task=True))
    after = store.state("hubspot", "GONE") or {}
    # The same decisions, at the same times, under the same names: nothing is sent again.
    assert (after["state"], after["decisions"]) == (before["state"], before["decisions"])

    # Without the upgrade's record, the task clock would leave it waiting for a task never sent.
    other = LeadStore(fakeredis.FakeRedis())
    other.apply_batch(silent("GONE"), Decider(P, at(41), grace_from_task=True))
    assert (other.state("hubspot", "GONE") or {})["state"] == "BREAKUP_DUE"


def test_going_live_after_a_dry_run_acts_on_what_the_dry_run_decided() -> None:
    """Review finding 3: a dry run's break-ups were never sent, and its leads waited or were lost without one."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    queue = make_queue(conn)
    assert record_existing_breakup_tasks(conn, queue) == 0 and conn.exists(BREAKUP_CLOCK_MARKER)
    assert record_existing_breakup_tasks(conn, queue) == 0  # done: a second start does nothing

    note_dry_run(conn)  # a dry-run worker started: its break-up runs its grace from the decision
    store.apply_batch(silent("DRY"), Decider(P, at(1), dry_run=True))
    store.reevaluate(store.due(at(40), 10), Decider(P, at(40), dry_run=True))
    dry = store.state("hubspot", "DRY") or {}
    assert dry["state"] == "LOST" and dry["acted"] == [] and dry["dry_acted"]
    # ...while a live break-up waits in the outbox for its drain, which records its task.
    store.apply_batch(silent("LIVE"), Decider(P, at(1), grace_from_task=True))
    assert [a["lead_id"] for a in outbox(conn)] == ["LIVE"]

    # The first live start: no task record for either; the dry run's lead is due at once.
    assert record_existing_breakup_tasks(conn, queue, now=lambda: at(41) / 1000) == 0
    assert queue.jobs == [] and conn.zscore(DUE_KEY, "hubspot:DRY") == at(41)
    store.reevaluate(store.due(at(41), 10), Decider(P, at(41), grace_from_task=True))
    # Live, the break-up the dry run only pretended to send is sent, and the lead waits for it.
    live = store.state("hubspot", "DRY") or {}
    assert live["state"] == "BREAKUP_DUE" and "dry_acted" not in live
    assert [(a["lead_id"], a["kind"], a["dry_run"]) for a in outbox(conn)] == [
        ("LIVE", "breakup_task", False),
        ("DRY", "breakup_task", False),
    ]
    store.reevaluate([("hubspot", "DRY")], Decider(P, at(42), grace_from_task=True))
    assert len(outbox(conn)) == 2  # sent once
    assert record_existing_breakup_tasks(conn, queue) == 0  # the dry-run mark is cleared


def outbox(conn: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange("pruner:outbox:hubspot", 0, -1)]


def test_with_the_task_clock_off_going_live_still_acts_on_a_dry_runs_decisions() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    queue = make_queue(conn)
    note_dry_run(conn)
    store.apply_batch(silent("DRY"), Decider(P, at(1), dry_run=True))
    store.apply_batch(silent("OLD"), Decider(P, at(1)))
    conn.delete("pruner:outbox:hubspot")  # OLD's task: drained by a version that recorded none
    assert record_existing_breakup_tasks(conn, queue, now=lambda: at(2) / 1000, task_clock=False) == 0
    assert queue.jobs == [] and not conn.exists(BREAKUP_CLOCK_MARKER)  # the clock's upgrade waits for the clock
    assert conn.zscore(DUE_KEY, "hubspot:DRY") == at(2)
    store.reevaluate(store.due(at(2), 10), Decider(P, at(2)))
    assert [(a["lead_id"], a["kind"]) for a in outbox(conn)] == [("DRY", "breakup_task")]


def test_a_dry_run_worker_deciding_after_the_live_start_is_released_by_the_watchdog() -> None:
    """Dry-run workers outliving a go-live (a rolling deploy): what they decide after the live
    start is marked, and the next look releases it (found by a second reader)."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    assert record_existing_breakup_tasks(conn, make_queue(conn)) == 0  # the live start
    store.apply_batch(silent("LATE"), Decider(P, at(1), dry_run=True))  # a dry-run worker, still running
    assert release_after_dry_run(conn, at(2)) == 0  # nothing marked it
    note_dry_run(conn)  # what request_drains does for a dry run's actions
    assert release_after_dry_run(conn, at(2)) == 1 and conn.zscore(DUE_KEY, "hubspot:LATE") == at(2)
    assert release_after_dry_run(conn, at(3)) == 0  # taken once
