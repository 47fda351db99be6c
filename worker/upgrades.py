"""One-time changes to a store written by an earlier version, made by the first worker to start.

Each runs once per store (a marker key), is safe to run twice (what it writes is idempotent)
and beside live workers (it only queues events, applied like any other batch).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from rq import Queue

from rules.events import MAX_EVENTS_PER_BATCH, Crm, Event, EventType, parse_rfc3339_ms
from worker import eventlog
from worker.keys import STATE_PREFIX, lead_key, parse_due_member
from worker.queues import enqueue_events

log = logging.getLogger(__name__)

SOURCE = "upgrade"  # the `source` of the batches an upgrade queues
BREAKUP_CLOCK_MARKER = "pruner:upgraded:breakup_task_clock"
BREAKUP_CLOCK_LOCK = "pruner:upgrading:breakup_task_clock"


def record_existing_breakup_tasks(connection: redis.Redis, queue: Queue, scan_count: int = 500) -> int:
    """Give every lead already in BREAKUP_DUE a `breakup_task_created` at its decision's time.

    Since guardrail 7 a live break-up's grace runs from its task's creation, recorded by the
    outbox drain. Leads that entered BREAKUP_DUE under an earlier version (or in a dry run)
    have no such record and would wait for ever: they keep the grace they had, from the
    decision. Returns how many leads it queued an event for (0 when done before).

    Runs at the first start of a live worker with the task clock on (PRUNER_BREAKUP_TASK_CLOCK).
    Leads whose log already holds a task for their current break-up are left alone. Known
    gaps (issue #14, why the clock is off by default): leads lost before the switch replay
    into BREAKUP_DUE without a task, and so do leads a dry run had lost.
    """
    if connection.exists(BREAKUP_CLOCK_MARKER) or not connection.set(BREAKUP_CLOCK_LOCK, "1", nx=True, ex=3600):
        return 0
    try:
        pending: list[list[Any]] = []
        queued = 0
        for key in connection.scan_iter(f"{STATE_PREFIX}*", count=scan_count):
            raw = connection.get(key)
            state = json.loads(raw) if raw else {}
            decisions = state.get("decisions") or []
            if state.get("state") != "BREAKUP_DUE" or not decisions:
                continue
            crm, lead_id = parse_due_member(key[len(STATE_PREFIX) :])
            # Just after the decision: at its instant the replay has not entered BREAKUP_DUE yet.
            at = parse_rfc3339_ms(decisions[-1]["at"], "state.decisions.at") + 1
            log_blob: bytes | None = connection.get(lead_key(crm, lead_id))  # type: ignore[assignment]
            if any(e.type is EventType.BREAKUP_TASK_CREATED and e.occurred_ms >= at for e in eventlog.decode(log_blob)):
                continue  # its task was recorded: its grace runs from there
            event_id = f"pruner-task-upgrade:{crm}:{lead_id}:{at}"  # the same on a second run
            pending.append(Event(event_id, EventType.BREAKUP_TASK_CREATED, Crm(crm), lead_id, at, {}).to_wire())
            if len(pending) == MAX_EVENTS_PER_BATCH:
                enqueue_events(queue, pending, source=SOURCE)
                queued, pending = queued + len(pending), []
        if pending:
            enqueue_events(queue, pending, source=SOURCE)
            queued += len(pending)
        connection.set(BREAKUP_CLOCK_MARKER, "1")
        if queued:
            log.info("upgrade: %d leads in BREAKUP_DUE keep the grace they had (from their decision)", queued)
        return queued
    finally:
        connection.delete(BREAKUP_CLOCK_LOCK)
