"""The outbox drain's lock: one drain per CRM, requests never lost, a dead drain blocks nobody long."""

from __future__ import annotations

import json
from typing import Any

import fakeredis

from worker.actions import LOCK_TTL_MS, drain, lock_key, pending_key, watch
from worker.crm.base import ActionOutcome
from worker.keys import outbox_key, state_key


def queue(conn: fakeredis.FakeRedis, lead: str) -> None:
    conn.set(state_key("hubspot", lead), json.dumps({"state": "LOST"}))
    action = {"id": f"hubspot:{lead}:x#1", "kind": "mark_lost", "crm": "hubspot", "lead_id": lead}
    conn.rpush(outbox_key("hubspot"), json.dumps(action))
    conn.set(pending_key("hubspot"), "1")  # what request_drains does


class Recorder:
    def __init__(self, conn: fakeredis.FakeRedis, during: Any = None) -> None:
        self.conn, self.during, self.seen = conn, during, []

    def execute(self, actions: list[dict[str, Any]]) -> list[ActionOutcome]:
        self.seen += [a["lead_id"] for a in actions]
        if self.during:
            during, self.during = self.during, None
            during()
        return [ActionOutcome(a["id"], True, "") for a in actions]


def test_a_drain_asked_for_while_another_runs_is_carried_out_by_the_holder() -> None:
    conn = fakeredis.FakeRedis()
    queue(conn, "L1")
    answers = []

    def another_request() -> None:
        # A batch queues an action and its drain job runs while this drain executes.
        queue(conn, "L2")
        answers.append(drain(conn, "hubspot", lambda: Recorder(conn)))

    executor = Recorder(conn, another_request)
    counts = drain(conn, "hubspot", lambda: executor)
    assert answers == [{"locked": 1}]  # returned at once, no worker held waiting
    assert executor.seen == ["L1", "L2"] and counts["executed"] == 2
    assert conn.llen(outbox_key("hubspot")) == 0 and not conn.exists(lock_key("hubspot"))


def test_a_request_that_comes_after_the_last_read_is_not_lost() -> None:
    class LateRequest(fakeredis.FakeRedis):
        """An action and its pending mark arrive just as the drain finds the outbox empty."""

        armed = True

        def lrange(self, name: Any, start: int, end: int) -> Any:
            out = super().lrange(name, start, end)
            if not out and self.armed:
                self.armed = False
                queue(self, "L2")
            return out

    late = LateRequest()
    queue(late, "L1")
    executor = Recorder(late)
    assert drain(late, "hubspot", lambda: executor)["executed"] == 2
    assert executor.seen == ["L1", "L2"]


def test_a_drain_hands_over_when_its_time_is_spent() -> None:
    conn = fakeredis.FakeRedis()
    for lead in ("L1", "L2"):
        queue(conn, lead)
    ticks = iter(range(0, 1000, 15))
    counts = drain(conn, "hubspot", lambda: Recorder(conn), budget_s=20, clock=lambda: next(ticks))
    assert counts["again"] == 1 and not conn.exists(lock_key("hubspot"))


def test_the_watchdog_names_outboxes_that_nobody_drains() -> None:
    conn = fakeredis.FakeRedis()
    queue(conn, "L1")
    conn.rpush(outbox_key("salesforce"), "{}")
    conn.set(lock_key("salesforce"), "a live drain", px=LOCK_TTL_MS)
    assert watch(conn, ["hubspot", "salesforce"]) == ["hubspot"]
    conn.delete(outbox_key("hubspot"))
    assert watch(conn, ["hubspot", "salesforce"]) == []
