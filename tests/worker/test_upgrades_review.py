"""The clock's upgrade leaves alone what a second reader found it faked (worker/upgrades.py).

A break-up whose task the CRM refused waits in BREAKUP_DUE (documented, and alerted on): a task
record at its decision would lose the lead without a break-up. A task the drain created and
recorded, whose record is still in a queued job, must not get a second record dated earlier.
"""

from __future__ import annotations

import json

import fakeredis

from rules.events import Event
from tests.rules_helpers import at
from tests.worker.test_upgrades import P, queued, silent
from worker.actions import task_created
from worker.decide import Decider
from worker.queues import enqueue_events, make_queue
from worker.store import LeadStore
from worker.upgrades import note_dry_run, record_existing_breakup_tasks


def refused(conn: fakeredis.FakeRedis, store: LeadStore) -> None:
    """A live break-up whose task HubSpot refused for good: the drain moved it to pruner:dead."""
    store.apply_batch(silent("REFUSED"), Decider(P, at(1), grace_from_task=True))
    [action] = [json.loads(r) for r in conn.lrange("pruner:outbox:hubspot", 0, -1)]
    conn.delete("pruner:outbox:hubspot")
    conn.rpush("pruner:dead:hubspot", json.dumps({"id": action["id"], "detail": "400", "at": 0}))


def state_after(conn: fakeredis.FakeRedis, store: LeadStore) -> str:
    queue = make_queue(conn)
    store.apply_batch(queued(queue), Decider(P, at(40), grace_from_task=True))
    store.reevaluate(store.due(at(40), 10), Decider(P, at(40), grace_from_task=True))
    return str((store.state("hubspot", "REFUSED") or {})["state"])


def test_a_refused_task_is_not_faked_by_going_live_after_a_dry_run() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    assert record_existing_breakup_tasks(conn, make_queue(conn)) == 0  # the clock's upgrade, done
    refused(conn, store)
    note_dry_run(conn)  # an operator runs a dry-run worker a while, then goes live again
    assert record_existing_breakup_tasks(conn, make_queue(conn), now=lambda: at(40) / 1000) == 0
    assert state_after(conn, store) == "BREAKUP_DUE"  # not LOST without its break-up


def test_a_refused_task_is_not_faked_by_the_clocks_upgrade() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    conn.set("pruner:upgraded:breakup_task_clock", "1")  # a store that ran the opt-in clock before
    refused(conn, store)
    assert record_existing_breakup_tasks(conn, make_queue(conn), now=lambda: at(40) / 1000) == 0
    assert state_after(conn, store) == "BREAKUP_DUE"


def test_a_task_recorded_but_not_yet_applied_gets_no_second_record() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    queue = make_queue(conn)
    store.apply_batch(silent("L"), Decider(P, at(1), grace_from_task=True))
    [action] = [json.loads(r) for r in conn.lrange("pruner:outbox:hubspot", 0, -1)]
    # Held back by the owner's budget for 5 days, then created: the drain's transaction removes
    # the outbox entry and queues the task's record. A deploy starts the new worker right then.
    created = at(6)
    conn.delete("pruner:outbox:hubspot")
    enqueue_events(queue, [task_created(action, created).to_wire()], "outbox")
    assert record_existing_breakup_tasks(conn, queue, now=lambda: created / 1000) == 0
    [event] = [Event.from_wire(w) for job in queue.jobs for w in job.args[0]]
    assert event.occurred_ms == created  # the drain's record only: the grace runs from the task
