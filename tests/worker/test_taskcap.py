"""The roll-out guard (guardrail 7): at most N break-up and check-in tasks per owner per day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis

from rules.events import format_ms
from worker.actions import done_key, drain
from worker.crm.base import ActionOutcome
from worker.keys import outbox_key, state_key
from worker.taskcap import TaskCap, cap_key, deferred_count, release_due

DAY0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday morning, UTC


def queue_task(conn: fakeredis.FakeRedis, lead: str, decided: datetime, kind: str = "breakup_task") -> str:
    conn.set(state_key("hubspot", lead), json.dumps({"state": "BREAKUP_DUE"}))
    action_id = f"hubspot:{lead}:unresponsive:BREAKUP_DUE@0#1"
    action = {
        "id": action_id,
        "kind": kind,
        "crm": "hubspot",
        "lead_id": lead,
        "at": format_ms(int(decided.timestamp() * 1000)),
    }
    conn.rpush(outbox_key("hubspot"), json.dumps(action))
    return action_id


class OwnedExecutor:
    """Creates every task it is given, and says who owns which lead, like both CRM executors."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners, self.created = owners, []

    def task_owners(self, actions: list[dict[str, Any]]) -> dict[str, str]:
        return {a["lead_id"]: self.owners[a["lead_id"]] for a in actions if a["lead_id"] in self.owners}

    def execute(self, actions: list[dict[str, Any]]) -> list[ActionOutcome]:
        self.created += [a["lead_id"] for a in actions]
        return [ActionOutcome(a["id"], True, "") for a in actions]


def test_an_owner_gets_at_most_the_daily_budget_oldest_silence_first_the_rest_the_next_day() -> None:
    conn = fakeredis.FakeRedis()
    # 25 stale leads of Ann's, decided oldest first by lead number, queued in shuffled order; 3 of Bob's.
    ann = [f"A{i:02d}" for i in range(25)]
    for i in [7, 3, 24, 0, 12, 18, 5, 21, 9, 1, 15, 22, 2, 11, 20, 6, 14, 23, 4, 10, 19, 8, 16, 13, 17]:
        queue_task(conn, ann[i], DAY0 - timedelta(days=100 - i))
    for j in range(3):
        queue_task(conn, f"B{j}", DAY0 - timedelta(days=1))
    owners = {**dict.fromkeys(ann, "ann"), "B0": "bob", "B1": "bob", "B2": "bob"}
    today = DAY0.timestamp()
    executor = OwnedExecutor(owners)
    counts = drain(conn, "hubspot", lambda: executor, cap=TaskCap(conn, "hubspot", 20, lambda: today))
    assert counts["executed"] == 23 and counts["deferred"] == 5
    assert sorted(executor.created) == sorted(ann[:20] + ["B0", "B1", "B2"])  # Ann's 20 longest silent
    assert conn.llen(outbox_key("hubspot")) == 0 and deferred_count(conn, "hubspot") == 5
    assert conn.hgetall(cap_key("hubspot", "2026-03-02")) == {b"ann": b"20", b"bob": b"3"}
    # Later the same day nothing more goes out, even when the clock asks.
    assert release_due(conn, "hubspot", today + 3600) == 0
    # The next day the five come back first in the outbox, oldest first, and go out.
    tomorrow = (DAY0 + timedelta(days=1)).replace(hour=0, minute=0, second=1).timestamp()
    assert release_due(conn, "hubspot", tomorrow) == 5
    queued = [json.loads(raw)["lead_id"] for raw in conn.lrange(outbox_key("hubspot"), 0, -1)]
    assert queued == ann[20:]
    again = OwnedExecutor(owners)
    counts = drain(conn, "hubspot", lambda: again, cap=TaskCap(conn, "hubspot", 20, lambda: tomorrow))
    assert again.created == ann[20:] and counts.get("deferred", 0) == 0
    assert conn.scard(done_key("hubspot")) == 28  # each created once, none twice


def test_a_deferred_task_whose_lead_objected_meanwhile_is_never_sent() -> None:
    conn = fakeredis.FakeRedis()
    for i in range(3):
        queue_task(conn, f"L{i}", DAY0 - timedelta(days=10 - i))
    owners = {"L0": "ann", "L1": "ann", "L2": "ann"}
    today = DAY0.timestamp()
    drain(conn, "hubspot", lambda: OwnedExecutor(owners), cap=TaskCap(conn, "hubspot", 2, lambda: today))
    conn.set(state_key("hubspot", "L2"), json.dumps({"state": "SUPPRESSED"}))  # a do-not-contact overnight
    tomorrow = today + 86_400
    release_due(conn, "hubspot", tomorrow)
    executor = OwnedExecutor(owners)
    counts = drain(conn, "hubspot", lambda: executor, cap=TaskCap(conn, "hubspot", 2, lambda: tomorrow))
    assert executor.created == [] and counts["skipped_suppressed"] == 1


def test_no_budget_and_executors_that_cannot_name_owners_send_everything() -> None:
    for cap, executor in ((0, OwnedExecutor({"L0": "ann", "L1": "ann"})), (1, None)):
        conn = fakeredis.FakeRedis()
        for i in range(2):
            queue_task(conn, f"L{i}", DAY0)

        class Plain:
            created: list[str] = []

            def execute(self, actions: list[dict[str, Any]]) -> list[ActionOutcome]:
                return [ActionOutcome(a["id"], True, "") for a in actions]

        chosen: Any = executor or Plain()
        counts = drain(conn, "hubspot", lambda c=chosen: c, cap=TaskCap(conn, "hubspot", cap, lambda: DAY0.timestamp()))
        assert counts["executed"] == 2 and "deferred" not in counts


def test_a_deferred_task_whose_lead_replied_or_was_lost_meanwhile_is_dropped_as_moot() -> None:
    """A parked break-up task is only created while its lead still waits for it (review finding 5)."""
    conn = fakeredis.FakeRedis()
    for i in range(4):
        queue_task(conn, f"L{i}", DAY0 - timedelta(days=10 - i))
    owners = {f"L{i}": "ann" for i in range(4)}
    today = DAY0.timestamp()
    drain(conn, "hubspot", lambda: OwnedExecutor(owners), cap=TaskCap(conn, "hubspot", 1, lambda: today))
    replied = format_ms(int((DAY0 - timedelta(days=1)).timestamp() * 1000))
    came_back = {"state": "ACTIVE", "decisions": [{"to": "ACTIVE", "at": replied}]}
    conn.set(state_key("hubspot", "L1"), json.dumps(came_back))
    conn.set(state_key("hubspot", "L2"), json.dumps({"state": "LOST"}))  # its grace ran out while it waited
    # L3 replied, then went silent again: BREAKUP_DUE by a newer decision, with a task of its own queued.
    again = [{"to": "ACTIVE", "at": replied}, {"to": "BREAKUP_DUE", "at": replied}]
    conn.set(state_key("hubspot", "L3"), json.dumps({"state": "BREAKUP_DUE", "decisions": again}))
    tomorrow = today + 86_400
    release_due(conn, "hubspot", tomorrow)
    executor = OwnedExecutor(owners)
    counts = drain(conn, "hubspot", lambda: executor, cap=TaskCap(conn, "hubspot", 5, lambda: tomorrow))
    assert executor.created == [] and counts["skipped_moot"] == 3
    assert deferred_count(conn, "hubspot") == 0
