"""The outbox drain's lock: one drain per CRM, requests never lost, a dead drain blocks nobody long."""

from __future__ import annotations

import json
from typing import Any

import fakeredis

from worker.actions import LOCK_TTL_MS, dead_key, drain, lock_key, pending_key, watch
from worker.crm.base import ActionOutcome
from worker.keys import outbox_key, state_key
from worker.metrics import REFUSED_KEY


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


def test_a_break_up_task_the_crm_confirmed_is_queued_as_an_event_of_its_lead() -> None:
    # Guardrail 7: its grace runs from this event. Refused and dry-run tasks record nothing.
    from rules.events import Event, EventType, parse_rfc3339_ms
    from worker.queues import events_job, make_queue

    conn = fakeredis.FakeRedis()
    for lead, dry in (("T1", False), ("T2", False), ("T3", True)):
        conn.set(state_key("hubspot", lead), json.dumps({"state": "BREAKUP_DUE"}))
        action = {"id": f"hubspot:{lead}:unresponsive:BREAKUP_DUE@0#1", "kind": "breakup_task", "crm": "hubspot",
                  "lead_id": lead, "at": "2026-03-01T10:00:00Z", "dry_run": dry}  # fmt: skip
        conn.rpush(outbox_key("hubspot"), json.dumps(action))

    class RefusesT2(Recorder):
        def execute(self, actions: list[dict[str, Any]]) -> list[ActionOutcome]:
            return [ActionOutcome(a["id"], a["lead_id"] != "T2", "") for a in actions]

    q = make_queue(conn)
    counts = drain(
        conn, "hubspot", lambda: RefusesT2(conn), queue_events=lambda events: events_job(q, events, "outbox")
    )
    assert counts["tasks_recorded"] == 1 and q.count == 1
    [job] = q.jobs
    assert job.func_name == "worker.jobs.process_events" and job.kwargs == {"source": "outbox"}
    [wire] = job.args[0]
    event = Event.from_wire(wire)
    assert (event.type, event.lead_id, event.id) == (
        EventType.BREAKUP_TASK_CREATED,
        "T1",
        "pruner-task:hubspot:T1:unresponsive:BREAKUP_DUE@0#1",
    )
    assert event.occurred_ms > parse_rfc3339_ms("2026-03-01T10:00:00Z", "at")  # never at or before the decision
    assert event.data == {"decision_at": "2026-03-01T10:00:00Z"}  # the break-up it is for
    assert conn.llen(outbox_key("hubspot")) == 0
    # T2's refusal waits with its reason, and is counted for the alert (its lead waits for a task).
    assert [json.loads(e)["id"] for e in conn.lrange(dead_key("hubspot"), 0, -1)] == [
        "hubspot:T2:unresponsive:BREAKUP_DUE@0#1"
    ]
    assert conn.hgetall(REFUSED_KEY) == {b"hubspot|breakup_task": b"1"}


def test_a_task_confirmed_before_its_decisions_time_is_dated_just_after_it() -> None:
    from rules.events import parse_rfc3339_ms
    from worker.actions import task_created

    action: Any = {"id": "hubspot:L:x", "kind": "breakup_task", "crm": "hubspot", "lead_id": "L",
                   "at": "2026-03-01T10:00:00.500Z"}  # fmt: skip
    decided = parse_rfc3339_ms(action["at"], "at")
    assert task_created(action, decided - 60_000).occurred_ms == decided + 1  # a sender's clock ran ahead
    assert task_created(action, decided + 5_000).occurred_ms == decided + 5_000


def test_history_batches_leave_the_webhook_event_age_gauge_alone(monkeypatch: Any) -> None:
    # A backfill's months-old events (or Pruner's own task records) would read as a webhook
    # arriving months late on pruner_processing_lag_seconds{kind="event"}.
    import time as clock

    import redis
    from rq import SimpleWorker

    from rules.events import Crm, Event, EventType
    from tests.helpers import redis_url_for_tests
    from worker.metrics import LAG_KEY
    from worker.queues import enqueue_events, make_queue

    monkeypatch.setenv("PRUNER_DRY_RUN", "1")
    conn = redis.Redis.from_url(redis_url_for_tests(12))
    conn.flushdb()
    try:
        queue = make_queue(conn)
        now_ms = int(clock.time() * 1000)
        fresh = Event("w1", EventType.EMAIL_SENT, Crm.HUBSPOT, "G1", now_ms - 5_000, {})
        old = Event("b1", EventType.EMAIL_SENT, Crm.HUBSPOT, "G2", now_ms - 90 * 86_400_000, {})
        enqueue_events(queue, [fresh.to_wire()], source="events")
        enqueue_events(queue, [old.to_wire()], source="backfill")
        SimpleWorker([queue], connection=conn, serializer=queue.serializer).work(burst=True, with_scheduler=False)
        assert queue.failed_job_registry.count == 0
        lag = {k.decode(): float(v) for k, v in conn.hgetall(LAG_KEY).items()}
        assert lag["event_seconds"] < 600  # the webhook's five seconds, not the backfill's 90 days
    finally:
        conn.flushdb()
        conn.close()
