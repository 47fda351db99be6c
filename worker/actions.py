"""Draining the per-CRM outbox: execute decided actions against the CRM, exactly once each.

`drain` runs as an RQ job per CRM, one at a time (a Redis lock). It reads the
head of `pruner:outbox:{crm}`, skips actions already done (`pruner:done:{crm}`)
and contact actions for leads that are SUPPRESSED by now (a do-not-contact may
have arrived after the action was queued: RULES.md guardrail 4), hands the rest
to the CRM's executor in one call (so it can coalesce them into batch requests),
then records them done and removes them from the outbox. If the executor raises,
nothing is removed: the job fails, RQ retries it, and the actions stay queued.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from rules.lifecycle import CONTACT_ACTIONS, ActionKind
from worker.crm.base import ActionOutcome, Executor
from worker.gdpr import forget_progress
from worker.locks import release
from worker.store import outbox_key, state_key

log = logging.getLogger(__name__)

BATCH = 200
LOCK_MS = 10 * 60 * 1000
DONE_TTL_S = 14 * 86_400


def done_key(crm: str) -> str:
    return f"pruner:done:{crm}"


def dead_key(crm: str) -> str:
    """Actions the CRM refused for good (e.g. the record was deleted), with the reason."""
    return f"pruner:dead:{crm}"


def pending_key(crm: str) -> str:
    return f"pruner:drain:{crm}:pending"


def lock_key(crm: str) -> str:
    return f"pruner:drain:{crm}:lock"


def _suppressed(connection: redis.Redis, actions: list[dict[str, Any]]) -> set[str]:
    """Return ids of contact actions whose lead is SUPPRESSED now."""
    contact = [a for a in actions if ActionKind(a["kind"]) in CONTACT_ACTIONS]
    if not contact:
        return set()
    raw: list[bytes | None] = connection.mget([state_key(a["crm"], a["lead_id"]) for a in contact])  # type: ignore[assignment]
    out = set()
    for action, state in zip(contact, raw, strict=True):
        if state is not None and json.loads(state).get("state") == "SUPPRESSED":
            out.add(action["id"])
    return out


def _stateless(connection: redis.Redis, actions: list[dict[str, Any]]) -> set[str]:
    """Return ids of actions whose lead has no state record (any lead with an action has one until erased)."""
    if not actions:
        return set()
    raw: list[bytes | None] = connection.mget([state_key(a["crm"], a["lead_id"]) for a in actions])  # type: ignore[assignment]
    return {a["id"] for a, state in zip(actions, raw, strict=True) if state is None}


def drain(connection: redis.Redis, crm: str, executor_factory: Callable[[], Executor]) -> dict[str, int]:
    """Execute everything in the CRM's outbox; return counts. Raises if the CRM stays unavailable."""
    token = str(time.time_ns())
    if not connection.set(lock_key(crm), token, nx=True, px=LOCK_MS):
        return {"locked": 1}
    counts = {"executed": 0, "skipped_done": 0, "skipped_suppressed": 0, "dead": 0}
    executor: Executor | None = None
    try:
        # Actions arriving from now on must trigger another drain.
        connection.delete(pending_key(crm))
        while True:
            raw: list[bytes] = connection.lrange(outbox_key(crm), 0, BATCH - 1)  # type: ignore[assignment]
            if not raw:
                break
            actions = [json.loads(r) for r in raw]
            done_flags = connection.smismember(done_key(crm), [a["id"] for a in actions])
            todo = [a for a, done in zip(actions, done_flags, strict=True) if not done]
            counts["skipped_done"] += len(actions) - len(todo)
            suppressed = _suppressed(connection, todo)
            counts["skipped_suppressed"] += len(suppressed)
            todo = [a for a in todo if a["id"] not in suppressed]
            outcomes: list[ActionOutcome] = []
            if todo:
                executor = executor or executor_factory()
                outcomes = executor.execute(todo)
            # A lead erased (or forgotten) while its actions ran has no state left: keep no
            # record naming it, or its id would outlive the erasure's purge in these sets.
            gone = _stateless(connection, todo)
            dead = [o for o in outcomes if not o.ok]
            with connection.pipeline(transaction=True) as pipe:
                ids = [a["id"] for a in todo if a["id"] not in gone] + list(suppressed)
                if ids:
                    pipe.sadd(done_key(crm), *ids)
                    pipe.expire(done_key(crm), DONE_TTL_S)
                for outcome in (o for o in dead if o.action_id not in gone):
                    entry = {"id": outcome.action_id, "detail": outcome.detail[:500], "at": int(time.time())}
                    pipe.rpush(dead_key(crm), json.dumps(entry))
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
        log.info("outbox drained crm=%s %s", crm, " ".join(f"{k}={v}" for k, v in counts.items()))
        return counts
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()  # release the executor's HTTP session
        release(connection, lock_key(crm), token)  # ours only, checked and deleted at once
