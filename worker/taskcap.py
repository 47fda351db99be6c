"""The roll-out guard: at most N break-up and check-in tasks per owner per day (guardrail 7).

Installing Pruner on a pipeline with thousands of stale leads decides thousands of break-ups
at once; the outbox drain asks `TaskCap.admit` which of a batch's tasks fit each owner's
budget for the day (oldest decision first), creates those, and parks the rest in
`pruner:deferred:{crm}` until the next UTC day, when `release_due` (the clock's watchdog) puts
them back at the head of the outbox. They pass the drain's usual checks again then: a lead
suppressed or won meanwhile gets nothing.

Keys: `pruner:taskcap:{crm}:{YYYY-MM-DD}` hash owner -> tasks created that day (kept three
days); `pruner:deferred:{crm}` sorted set, the queued action's JSON -> when it may go.
Owners are the CRM's user ids as the executors assign them ("" when the task has none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from rules.events import parse_rfc3339_ms
from rules.states import ActionKind
from worker.action import Action
from worker.keys import outbox_key

TASK_KINDS = frozenset({ActionKind.BREAKUP_TASK.value, ActionKind.REENGAGE_TASK.value})
CAP_PREFIX = "pruner:taskcap:"
DEFERRED_PREFIX = "pruner:deferred:"
CAP_TTL_S = 3 * 86_400


def cap_key(crm: str, day: str) -> str:
    return f"{CAP_PREFIX}{crm}:{day}"


def deferred_key(crm: str) -> str:
    return f"{DEFERRED_PREFIX}{crm}"


def _day(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, tz=UTC).date().isoformat()


def _next_day_s(now_s: float) -> float:
    today = datetime.fromtimestamp(now_s, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


def _decided_ms(action: Action) -> int:
    return parse_rfc3339_ms(action["at"], "action.at") if action.get("at") else 0


class TaskCap:
    """One CRM's daily task budget per owner; `per_owner` 0 means no limit."""

    def __init__(self, connection: redis.Redis, crm: str, per_owner: int, now: Callable[[], float]) -> None:
        self.redis, self.crm, self.per_owner, self.now = connection, crm, per_owner, now

    def admit(self, tasks: Iterable[Action], owners: Mapping[str, str]) -> tuple[list[Action], list[Action]]:
        """Split `tasks` into those that fit today's budgets and those that wait, oldest decision first.

        `owners` maps a lead id to the owner its task goes to; a lead left out counts as "".
        """
        ordered = sorted(tasks, key=lambda a: (_decided_ms(a), a["id"]))
        if self.per_owner <= 0 or not ordered:
            return ordered, []
        names = sorted({owners.get(a["lead_id"], "") for a in ordered})
        counts: list[bytes | None] = self.redis.hmget(cap_key(self.crm, _day(self.now())), names)  # type: ignore[assignment]
        used = {name: int(c or 0) for name, c in zip(names, counts, strict=True)}
        admitted, waiting = [], []
        for action in ordered:
            owner = owners.get(action["lead_id"], "")
            if used[owner] < self.per_owner:
                used[owner] += 1
                admitted.append(action)
            else:
                waiting.append(action)
        return admitted, waiting

    def queue_created(self, pipe: Any, created: Iterable[Action], owners: Mapping[str, str]) -> None:
        """Count created tasks against their owners' budget for today (in the caller's transaction)."""
        per: dict[str, int] = {}
        for action in created:
            owner = owners.get(action["lead_id"], "")
            per[owner] = per.get(owner, 0) + 1
        if per:
            key = cap_key(self.crm, _day(self.now()))
            for owner, n in per.items():
                pipe.hincrby(key, owner, n)
            pipe.expire(key, CAP_TTL_S)

    def queue_deferral(self, pipe: Any, raw: Iterable[bytes]) -> None:
        """Park queued actions (their outbox JSON) until the next UTC day (in the caller's transaction)."""
        until = _next_day_s(self.now())
        entries = {entry: until for entry in raw}
        if entries:
            pipe.zadd(deferred_key(self.crm), entries)


def release_due(connection: redis.Redis, crm: str, now_s: float) -> int:
    """Put the deferred actions whose day has come back at the head of the outbox; return how many.

    Oldest decision first, and in one transaction (watched: two clocks release each once),
    so a crash between taking them out and putting them back cannot lose one.
    """
    with connection.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(deferred_key(crm))
                due: list[bytes] = pipe.zrangebyscore(deferred_key(crm), "-inf", now_s)  # type: ignore[assignment]
                if not due:
                    pipe.unwatch()
                    return 0
                ordered = sorted(due, key=lambda raw: (_decided_ms(action_of(raw)), raw))
                pipe.multi()
                pipe.lpush(outbox_key(crm), *reversed(ordered))  # the oldest ends up first
                pipe.zrem(deferred_key(crm), *due)
                pipe.execute()
                return len(due)
            except redis.WatchError:
                continue


def deferred_count(connection: redis.Redis, crm: str) -> int:
    return int(connection.zcard(deferred_key(crm)))


def action_of(raw: bytes) -> Action:
    action: Action = json.loads(raw)
    return action
