"""One-time changes to a store written by an earlier version, made by the first worker to start.

Each runs once per store (a marker key), is safe to run twice (what it writes is idempotent)
and beside live workers (it only queues events, applied like any other batch).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from rules.counters import LoggedEvent
from rules.events import MAX_EVENTS_PER_BATCH, Crm, Event, EventType, parse_rfc3339_ms
from rules.states import ActionKind
from worker import eventlog, staterecord
from worker.actions import OUTBOX_SOURCE, dead_key
from worker.held import release_held
from worker.keys import STATE_PREFIX, lead_key, outbox_key, parse_due_member
from worker.queues import PROCESS_EVENTS, enqueue_events
from worker.taskcap import deferred_key

log = logging.getLogger(__name__)

SOURCE = "upgrade"  # the `source` of the batches an upgrade queues
# 2: every break-up a state record keeps, not only a lead's current one (the first version of
# this upgrade handled leads still in BREAKUP_DUE only, and stranded those lost before).
BREAKUP_CLOCK_MARKER = "pruner:upgraded:breakup_task_clock:2"
BREAKUP_CLOCK_LOCK = "pruner:upgrading:breakup_task_clock"
# Set by every dry-run worker at start: the next live start makes every lead a dry run
# decided due at once, so that its current decision is acted on for real (worker/decide.py).
DRY_RUN_MARK = "pruner:breakup_task_clock:dry_run"
BREAKUP_TASK = ActionKind.BREAKUP_TASK.value


def note_dry_run(connection: redis.Redis) -> None:
    """Say that a dry run decides on this store: live workers act on what it decided."""
    connection.set(DRY_RUN_MARK, "1")


def release_after_dry_run(connection: redis.Redis, now_ms: int, scan_count: int = 500) -> int:
    """If a dry run decided since the last look, make its leads due now (worker/held.py); return how many.

    The mark is taken before the scan: one set by a dry-run batch meanwhile stays for next time.
    """
    if not connection.getdel(DRY_RUN_MARK):
        return 0
    released = release_held(connection, now_ms, scan_count)
    log.info("going live: %d leads a dry run decided are due now", released)
    return released


def record_existing_breakup_tasks(
    connection: redis.Redis,
    queue: Queue,
    scan_count: int = 500,
    now: Callable[[], float] = time.time,
    task_clock: bool = True,
) -> int:
    """Give every break-up decided live without a task record one, dated at its decision; and
    make the leads a dry run decided due at once.

    With guardrail 7's task clock a live break-up's grace runs from its task's creation, which
    the outbox drain records (`breakup_task_created`, naming the decision). Break-ups decided
    before the clock was on have no such record, and a replay would leave them waiting in
    BREAKUP_DUE for good: a lead lost long ago would come back to BREAKUP_DUE with no task to
    wait for (its break-up was acted on, so none is sent again). Each gets a record at its
    decision's own time, so its grace runs as it did, from the decision.

    Left alone: a break-up whose task is recorded in the lead's log, or in a job still to be
    applied; one whose task is on its way (in the outbox, or held back by the owner's daily
    budget), which the drain records when the CRM confirms it; a lead whose break-up task the
    CRM refused (`pruner:dead:{crm}`: it waits in BREAKUP_DUE, and the refusal is alerted on);
    and a break-up a dry run decided (`dry_acted`). A dry run sent
    nothing, so its leads are made due now and the sweep acts on their current decisions for
    real: a break-up's task is created, and its grace runs from then. (Break-ups decided by
    the dry run of a version before `dry_acted` cannot be told from live ones.) A state
    record keeps a lead's last 5 decisions: an older break-up, an episode or more back, keeps
    no record and replays as waiting until the lead's next reply, which it had already had.

    The records are written once, at the first live start of a worker with the task clock on;
    the first live start after a dry run only releases the dry run's leads (marker keys). It
    runs beside live workers: it only queues events, applied like any other batch, and moves
    due times. Returns how many break-ups it queued a
    record for (0 when there was nothing to do). With the task clock off (`task_clock`) it
    only makes a dry run's leads due.
    """
    records_due = task_clock and not connection.exists(BREAKUP_CLOCK_MARKER)
    release_due = bool(connection.exists(DRY_RUN_MARK))
    if not (records_due or release_due) or not connection.set(BREAKUP_CLOCK_LOCK, "1", nx=True, ex=3600):
        return 0
    try:
        queued = _record_breakups(connection, queue, scan_count) if records_due else 0
        # Only the dry run's leads: the scan for break-ups without a record is the clock's
        # one-time upgrade, never repeated (it would fake a refused task's record).
        release_after_dry_run(connection, int(now() * 1000), scan_count)
        if task_clock:
            connection.set(BREAKUP_CLOCK_MARKER, "1")
        return queued
    finally:
        connection.delete(BREAKUP_CLOCK_LOCK)


def _record_breakups(connection: redis.Redis, queue: Queue, scan_count: int) -> int:
    """The clock's one-time upgrade: queue a task record for each break-up decided without one."""
    on_the_way = _queued_tasks(connection)
    # Leads whose task the drain recorded but whose record is still in a queued job, or whose
    # task the CRM refused (it waits in BREAKUP_DUE, documented: faking its record would lose
    # it without a break-up).
    skipped = _recording(connection, queue) | _refused(connection)
    pending: list[list[Any]] = []
    queued = 0
    for key in connection.scan_iter(f"{STATE_PREFIX}*", count=scan_count):
        crm, lead_id = parse_due_member(key[len(STATE_PREFIX) :])
        if (crm, lead_id) in skipped:
            continue
        raw = connection.get(key)
        record = staterecord.decode(raw) if raw else {}
        dry = set(record.get("dry_acted") or [])
        breakups = [
            d
            for d in record.get("decisions") or []
            if d.get("to") == "BREAKUP_DUE"
            and (crm, lead_id, d["at"]) not in on_the_way
            and f"{d.get('rule')}:BREAKUP_DUE:{parse_rfc3339_ms(d['at'], 'state.decisions.at')}" not in dry
        ]
        if not breakups:
            continue
        log_blob: bytes | None = connection.get(lead_key(crm, lead_id))  # type: ignore[assignment]
        tasks = [e for e in eventlog.decode(log_blob) if e.type is EventType.BREAKUP_TASK_CREATED]
        for decision in breakups:
            at = parse_rfc3339_ms(decision["at"], "state.decisions.at")
            if any(_records(task, at) for task in tasks):
                continue
            event_id = f"pruner-task-upgrade:{crm}:{lead_id}:{decision['at']}"  # the same on a second run
            data = {"decision_at": decision["at"]}
            pending.append(Event(event_id, EventType.BREAKUP_TASK_CREATED, Crm(crm), lead_id, at, data).to_wire())
            if len(pending) == MAX_EVENTS_PER_BATCH:
                enqueue_events(queue, pending, source=SOURCE)
                queued, pending = queued + len(pending), []
    if pending:
        enqueue_events(queue, pending, source=SOURCE)
        queued += len(pending)
    if queued:
        log.info("upgrade: %d break-ups decided without a task keep the grace they had (from the decision)", queued)
    return queued


def _recording(connection: redis.Redis, queue: Queue) -> set[tuple[str, str]]:
    """Leads named by the drain's task records still waiting in a job (queued or being applied)."""
    # cleanup=False: reading, not RQ's registry maintenance (worker/reaper.py handles dead workers' jobs).
    ids = [*queue.get_job_ids(), *queue.started_job_registry.get_job_ids(cleanup=False)]
    found: set[tuple[str, str]] = set()
    for job in Job.fetch_many(ids, connection=connection, serializer=JSONSerializer):
        if job is None or job.func_name != PROCESS_EVENTS or job.kwargs.get("source") != OUTBOX_SOURCE:
            continue
        found.update((str(wire[2]), str(wire[3])) for wire in job.args[0])
    return found


def _refused(connection: redis.Redis) -> set[tuple[str, str]]:
    """Leads with a break-up task the CRM refused for good (`pruner:dead:{crm}`)."""
    found: set[tuple[str, str]] = set()
    for crm in Crm:
        raw: list[bytes] = connection.lrange(dead_key(crm.value), 0, -1)  # type: ignore[assignment]
        for entry in raw:
            action_id = str(json.loads(entry).get("id", ""))  # crm:lead:rule:STATE@episode#rank
            _, _, rest = action_id.partition(":")
            lead_id, _, name = rest.partition(":")
            if ":BREAKUP_DUE@" in f":{name}":
                found.add((crm.value, lead_id))
    return found


def _records(task: LoggedEvent, decided_ms: int) -> bool:
    """Whether a logged task record is the one of the break-up decided at `decided_ms`."""
    named = task.data.get("decision_at") if task.data else None
    if named is None:
        return task.occurred_ms >= decided_ms  # recorded before tasks named their break-up
    return parse_rfc3339_ms(named, "data.decision_at") == decided_ms


def _queued_tasks(connection: redis.Redis) -> set[tuple[str, str, str]]:
    """The break-up tasks waiting in an outbox or held back by a daily budget, as (crm, lead id,
    decision time): the drain records those itself."""
    found: set[tuple[str, str, str]] = set()
    for crm in Crm:
        raw: list[bytes] = connection.lrange(outbox_key(crm.value), 0, -1)  # type: ignore[assignment]
        raw += connection.zrange(deferred_key(crm.value), 0, -1)  # type: ignore[arg-type]
        actions = (json.loads(entry) for entry in raw)
        found.update((a["crm"], a["lead_id"], a.get("at")) for a in actions if a["kind"] == BREAKUP_TASK)
    return found
