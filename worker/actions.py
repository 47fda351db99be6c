"""Draining the per-CRM outbox: execute decided actions against the CRM, exactly once each.

`drain` runs as an RQ job per CRM, one at a time (a Redis lock with a short TTL that a
heartbeat renews, so a drainer that died blocks nobody for long). It reads the
head of `pruner:outbox:{crm}`, skips actions already done (`pruner:done:{crm}`)
and contact actions for leads that are SUPPRESSED by now (a do-not-contact may
have arrived after the action was queued: docs/lifecycle.md guardrail 4), hands the rest
to the CRM's executor in one call (so it can coalesce them into batch requests),
then records them done and removes them from the outbox. If the executor raises,
nothing is removed: the job fails, RQ retries it, and the actions stay queued.

A break-up task the CRM confirmed becomes an event of its lead's own history,
`breakup_task_created`, queued in the same transaction that records the action done: the
grace period before LOST runs from it (docs/lifecycle.md guardrail 7), so it is never lost
nor recorded for a task that does not exist.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from rules.events import Crm, Event, EventType, parse_rfc3339_ms
from rules.states import CONTACT_ACTIONS, ActionKind
from worker import staterecord
from worker.action import Action
from worker.crm.base import ActionOutcome, Executor
from worker.crm.progress import forget_progress
from worker.keys import outbox_key, state_key
from worker.locks import Heartbeat, release
from worker.metrics import REFUSED_KEY
from worker.suppression import SUPPRESSED_KEY, lead_hash
from worker.taskcap import TASK_KINDS, TaskCap

log = logging.getLogger(__name__)

BATCH = 200
# The drain lock's TTL, renewed by a heartbeat every third of it: a dead drainer blocks the
# outbox this long at most (it was 10 minutes, never renewed: FINDINGS item 2).
LOCK_TTL_MS = 15_000
# How long one drain job executes before it hands over (platforms SIGKILL 30 s after SIGTERM).
BUDGET_S = 20.0
CONTACT_KINDS = frozenset(kind.value for kind in CONTACT_ACTIONS)  # by name: not every kind is a decision's
MARK_LOST = ActionKind.MARK_LOST.value
BREAKUP_TASK = ActionKind.BREAKUP_TASK.value
# Writes the commands that queue a batch of events into the drain's own transaction
# (worker/queues.py `events_job`, bound to the queue by the job that drains).
QueueEvents = Callable[[list[list[Any]]], list[tuple[str | bytes, ...]]]
DONE_TTL_S = 14 * 86_400
OUTBOX_SOURCE = "outbox"  # the source of the breakup_task_created batches the drain queues


def done_key(crm: str) -> str:
    return f"pruner:done:{crm}"


def dead_key(crm: str) -> str:
    """Actions the CRM refused for good (e.g. the record was deleted), with the reason."""
    return f"pruner:dead:{crm}"


def pending_key(crm: str) -> str:
    return f"pruner:drain:{crm}:pending"


def lock_key(crm: str) -> str:
    return f"pruner:drain:{crm}:lock"


# The state a contact task was queued for: it is moot once the lead has left it.
TASK_STATE = {ActionKind.BREAKUP_TASK.value: "BREAKUP_DUE", ActionKind.REENGAGE_TASK.value: "REENGAGE_DUE"}


def _cancelled(connection: redis.Redis, actions: list[Action]) -> tuple[set[str], set[str], set[str]]:
    """Return ids of actions the lead's state now forbids: (suppressed, won, moot).

    A SUPPRESSED lead gets no contact action (a break-up or check-in task); a WON lead, a
    customer now, gets none either, and is not marked lost: whatever was queued before the
    deal was won is dropped here, at the last moment, like a do-not-contact's. A task is moot
    when its lead has left the state it was queued for (it replied, or its grace ran out while
    the task waited for its owner's daily budget), or has come back to ACTIVE since its
    decision and found its way to that state again (a newer task is queued for that).
    """
    relevant = [a for a in actions if a["kind"] in CONTACT_KINDS or a["kind"] == MARK_LOST]
    if not relevant:
        return set(), set(), set()
    raw: list[bytes | None] = connection.mget([state_key(a["crm"], a["lead_id"]) for a in relevant])  # type: ignore[assignment]
    suppressed, won, moot = set(), set(), set()
    for action, blob in zip(relevant, raw, strict=True):
        record = staterecord.decode(blob) if blob is not None else {}
        state = record.get("state")
        if state == "SUPPRESSED" and action["kind"] in CONTACT_KINDS:
            suppressed.add(action["id"])
        elif state == "WON":
            won.add(action["id"])
        elif blob is not None and action["kind"] in TASK_STATE and _moot(action, record):
            moot.add(action["id"])
    return suppressed, won, moot


def _moot(action: Action, record: Mapping[str, Any]) -> bool:
    if record.get("state") != TASK_STATE[action["kind"]]:
        return True
    if "at" not in action:
        return False  # written before actions carried their decision's time
    decided = parse_rfc3339_ms(action["at"], "action.at")
    returns = (d for d in record.get("decisions") or [] if d.get("to") == "ACTIVE")
    return any(parse_rfc3339_ms(d.get("at"), "state.decisions.at") > decided for d in returns)


def _stateless(connection: redis.Redis, actions: list[Action]) -> set[str]:
    """Return ids of actions whose lead has no state record (any lead with an action has one until erased)."""
    if not actions:
        return set()
    raw: list[bytes | None] = connection.mget([state_key(a["crm"], a["lead_id"]) for a in actions])  # type: ignore[assignment]
    return {a["id"] for a, state in zip(actions, raw, strict=True) if state is None}


def task_created(action: Action, now_ms: int) -> Event:
    """The event recording that a break-up action's task exists in the CRM, as of `now_ms`.

    Its id derives from the action's, so a drain retried after a crash records it once. Never
    dated at or before the decision: the replay would fold it in before the lead entered
    BREAKUP_DUE (a decision dated by an event from a clock slightly ahead) and ignore it.
    """
    decided = parse_rfc3339_ms(action["at"], "action.at")
    at = max(now_ms, decided + 1)
    data = {"decision_at": action["at"]}  # the break-up it is for, wherever late events move it
    return Event(
        f"pruner-task:{action['id']}", EventType.BREAKUP_TASK_CREATED, Crm(action["crm"]), action["lead_id"], at, data
    )


def drain(
    connection: redis.Redis,
    crm: str,
    executor_factory: Callable[[], Executor],
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
    queue_events: QueueEvents | None = None,
    cap: TaskCap | None = None,
) -> dict[str, int]:
    """Execute the CRM's outbox; return counts. Raises if the CRM stays unavailable.

    One drain per CRM at a time, under a lock with a short TTL that a heartbeat renews: a
    drain that died frees it within seconds. A drain that finds the lock taken returns at
    once ({"locked": 1}) rather than hold a worker: its request (the pending mark) is seen by
    the holder, which deletes the mark before each read and looks for it again after letting
    go; or, should the holder have died, by the clock's outbox watchdog. `{"again": 1}` when
    the drain used its time budget: the caller queues a fresh one at once. `queue_events`
    queues the `breakup_task_created` events of confirmed break-up tasks (without it, none);
    `cap` holds tasks past an owner's daily budget for the next day (worker/taskcap.py).
    """
    token = uuid.uuid4().hex
    counts = {"executed": 0, "skipped_done": 0, "skipped_suppressed": 0, "skipped_won": 0, "dead": 0}
    executor: Executor | None = None

    def get_executor() -> Executor:
        nonlocal executor
        executor = executor or executor_factory()  # only once there is something to execute
        return executor

    started = clock()
    try:
        while connection.set(lock_key(crm), token, nx=True, px=LOCK_TTL_MS):
            try:
                with Heartbeat(connection, lock_key(crm), token, LOCK_TTL_MS) as heartbeat:
                    while not heartbeat.lost and clock() - started < budget_s:
                        # Actions queued before this read are in it; later ones must call a drain.
                        connection.delete(pending_key(crm))
                        raw: list[bytes] = connection.lrange(outbox_key(crm), 0, BATCH - 1)  # type: ignore[assignment]
                        if not raw:
                            break
                        _drain_batch(connection, crm, raw, get_executor, counts, queue_events, cap)
                    else:
                        # Out of time (a deploy's SIGKILL comes 30 s after SIGTERM), or the lock
                        # was lost while Redis was away: a fresh drain carries on.
                        counts["again"] = 1
            finally:
                release(connection, lock_key(crm), token)  # ours only, checked and deleted at once
            if counts.get("again") or not connection.exists(pending_key(crm)):
                break
            # A drain was asked for after our last read and may have found the lock taken: go on.
        else:
            if not any(counts.values()):
                return {"locked": 1}
        log.info("outbox drained crm=%s %s", crm, " ".join(f"{k}={v}" for k, v in counts.items()))
        return counts
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()  # release the executor's HTTP session


def watch(connection: redis.Redis, crms: Sequence[str]) -> list[str]:
    """Return the CRMs whose outbox holds actions while no drain holds its lock.

    A drain that died leaves its actions queued and its pending mark set, which keeps new
    drain jobs from being queued; the clock calls this every few seconds and queues a drain
    for each CRM it returns.
    """
    with connection.pipeline(transaction=False) as pipe:
        for crm in crms:
            pipe.llen(outbox_key(crm))
            pipe.exists(lock_key(crm))
        answers = pipe.execute()
    return [crm for i, crm in enumerate(crms) if answers[2 * i] and not answers[2 * i + 1]]


def _drain_batch(
    connection: redis.Redis,
    crm: str,
    raw: list[bytes],
    executor: Callable[[], Executor],
    counts: dict[str, int],
    queue_events: QueueEvents | None = None,
    cap: TaskCap | None = None,
) -> None:
    """Execute one batch read from the head of the outbox, then record it done and remove it."""
    actions = [json.loads(r) for r in raw]
    done_flags = connection.smismember(done_key(crm), [a["id"] for a in actions])
    todo = [a for a, done in zip(actions, done_flags, strict=True) if not done]
    counts["skipped_done"] += len(actions) - len(todo)
    suppressed, won, moot = _cancelled(connection, todo)
    counts["skipped_suppressed"] += len(suppressed)
    counts["skipped_won"] += len(won)
    if moot:
        counts["skipped_moot"] = counts.get("skipped_moot", 0) + len(moot)
    suppressed |= won | moot  # recorded as handled alike: never to be sent
    todo = [a for a in todo if a["id"] not in suppressed]
    owners, waiting = _over_budget(todo, executor, cap)
    if waiting:
        todo = [a for a in todo if a["id"] not in waiting]
        counts["deferred"] = counts.get("deferred", 0) + len(waiting)
    outcomes: list[ActionOutcome] = executor().execute(todo) if todo else []
    # A lead erased (or forgotten) while its actions ran has no state left: keep no
    # record naming it, or its id would outlive the erasure's purge in these sets.
    gone = _stateless(connection, todo)
    dead = [o for o in outcomes if not o.ok]
    confirmed = {o.action_id for o in outcomes if o.ok}
    tasks = [a for a in todo if a["kind"] == BREAKUP_TASK and a["id"] in confirmed and a["id"] not in gone]
    now_ms = int(time.time() * 1000)
    created = [task_created(a, now_ms).to_wire() for a in tasks if not a.get("dry_run")]
    with connection.pipeline(transaction=True) as pipe:
        if cap is not None:
            done_tasks = [a for a in todo if a["kind"] in TASK_KINDS and a["id"] in confirmed and not a.get("dry_run")]
            cap.queue_created(pipe, done_tasks, owners)
            cap.queue_deferral(pipe, [r for r, a in zip(raw, actions, strict=True) if a["id"] in waiting])
        if created and queue_events is not None:
            for command in queue_events(created):
                pipe.execute_command(*command)
            counts["tasks_recorded"] = counts.get("tasks_recorded", 0) + len(created)
        ids = [a["id"] for a in todo if a["id"] not in gone] + list(suppressed)
        if ids:
            pipe.sadd(done_key(crm), *ids)
            pipe.expire(done_key(crm), DONE_TTL_S)
        kinds = {a["id"]: a["kind"] for a in todo}
        for outcome in (o for o in dead if o.action_id not in gone):
            entry = {"id": outcome.action_id, "detail": outcome.detail[:500], "at": int(time.time())}
            pipe.rpush(dead_key(crm), json.dumps(entry))
            # Counted for the alert: a refused break-up task leaves its lead waiting in BREAKUP_DUE.
            pipe.hincrby(REFUSED_KEY, f"{crm}|{kinds.get(outcome.action_id, 'unknown')}", 1)
        # Remove exactly the entries handled, not the first len(raw): an erasure's purge
        # may have removed some meanwhile, and trimming by count would then drop
        # actions queued since, unseen.
        for handled in raw:
            pipe.lrem(outbox_key(crm), 1, handled)  # type: ignore[arg-type]
        pipe.execute()
    if gone:
        # Steps it marked done while the erasure purged: hashes of guessable ids.
        forget_progress(connection, crm, gone)
    counts["executed"] += len(outcomes) - len(dead)
    counts["dead"] += len(dead)


def _over_budget(
    todo: list[Action], executor: Callable[[], Executor], cap: TaskCap | None
) -> tuple[dict[str, str], set[str]]:
    """The tasks' owners, and the ids of tasks past their owner's budget for today (to wait).

    Only for an executor that says who gets a task (`task_owners`); its answer is what it
    assigns the tasks to when it creates them, read once.
    """
    tasks = [a for a in todo if a["kind"] in TASK_KINDS and not a.get("dry_run")]
    if cap is None or cap.per_owner <= 0 or not tasks:
        return {}, set()
    ask = getattr(executor(), "task_owners", None)
    if not callable(ask):
        return {}, set()
    owners: dict[str, str] = ask(tasks)
    _, waiting = cap.admit(tasks, owners)
    return owners, {a["id"] for a in waiting}


# -- erasure forwarding (PRUNER_FORWARD_ERASURE) -----------------------------------------------

# Not a lifecycle decision but an action all the same: an erasure received from another channel,
# carried out in the lead's CRM too (HubSpot GDPR delete, Salesforce Individual.ShouldForget).
FORWARD_ERASURE = "forward_erasure"
# Keyed hashes (worker/suppression.py `lead_hash`) of leads whose erasure was forwarded: once each, ever.
FORWARDED_KEY = "pruner:erasures:forwarded"
# Queue the forward only if the erasure was recorded (its lead hash is on the suppression list),
# and only the first time: a redelivered erasure, or a job retried after a crash, queues nothing
# more. One script, so the mark and the outbox entry are written together or not at all.
_FORWARD_ONCE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


def queue_erasure_forwards(
    connection: redis.Redis, key: bytes, erasures: list[tuple[str, str, str]], source: str
) -> list[Action]:
    """Put a `forward_erasure` action for each erased (crm, lead id, time) in its CRM's outbox, once ever.

    Returns the actions queued now (for `request_drains`). Call it after the erasure was
    applied and purged: the purge removes every outbox entry of the lead, this one included.
    """
    script = connection.register_script(_FORWARD_ONCE)
    queued: list[Action] = []
    for crm, lead_id, at in erasures:
        action: Action = {
            "id": f"{crm}:{lead_id}:erasure_requested:forward",
            "kind": FORWARD_ERASURE,
            "crm": crm,
            "lead_id": lead_id,
            "rule": "erasure_requested",
            "reason": "erasure_requested",
            "at": at,
            "source": source,
            "dry_run": False,
        }
        keys = [SUPPRESSED_KEY, FORWARDED_KEY, outbox_key(crm)]
        if script(keys=keys, args=[lead_hash(key, crm, lead_id), json.dumps(action)]):
            queued.append(action)
    if queued:
        log.info("erasures forwarded to the CRM outbox: %d (source=%s)", len(queued), source)
    return queued
