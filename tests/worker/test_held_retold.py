"""A decision acted on live, then re-told (renumbered and moved) by a held batch (a live
backfill's, or a dry run's), is not sent a second time when the held decisions are released.

The held batch recognises the re-told break-up (`carried_over`) and must keep its new names as
acted on for real, not only as held: the live evaluation after the release would otherwise
match it with nothing and queue a second task (found by a second reader)."""

from __future__ import annotations

import json

import fakeredis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from tests.worker.test_upgrades import P
from worker import jobs
from worker.config import Config
from worker.decide import Decider
from worker.held import release_held
from worker.store import LeadStore

H = 3_600_000
LEAD = "7401"


def ev(kind: EventType, hours: float, n: str) -> Event:
    return Event(f"{n}", kind, Crm.HUBSPOT, LEAD, at(0) + int(hours * H), {})


def tasks(conn: fakeredis.FakeRedis) -> list[str]:
    return [
        a["id"] for a in map(json.loads, conn.lrange("pruner:outbox:hubspot", 0, -1)) if a["kind"] == "breakup_task"
    ]


def run(held: Decider) -> list[str]:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    now = at(1)
    live = Decider(P, now, grace_from_task=True)
    # Pushed back twice: the break-up, acted on live (its task is in the outbox).
    store.apply_batch([ev(EventType.MEETING_RESCHEDULED, h, f"r{h}") for h in (6, 7)], live)
    assert len(tasks(conn)) == 1
    # Late, through the held decider: a "no" twice and a reply before (an episode earlier),
    # and a reschedule that moves pushed_back from hour 7 to hour 6.
    late = [ev(EventType.NOT_INTERESTED, h, f"n{h}") for h in (1, 2)] + [ev(EventType.EMAIL_REPLIED, 3, "rep")]
    store.apply_batch([*late, ev(EventType.MEETING_RESCHEDULED, 4, "r4")], held)
    state = store.state("hubspot", LEAD) or {}
    assert [d["rule"] for d in state["decisions"]][-2:] == ["reply_resets", "pushed_back"], state["decisions"]
    # Released (end of the backfill, or go-live), then the sweep evaluates the lead live.
    release_held(conn, now)
    store.reevaluate(store.due(now, 10), Decider(P, now, grace_from_task=True))
    return tasks(conn)


def test_control_late_batch_decided_live_sends_no_second_task() -> None:
    assert len(run(Decider(P, at(1), grace_from_task=True))) == 1


def test_late_batch_held_by_a_live_backfill_sends_no_second_task() -> None:
    held = jobs.decider(Config.from_env({}), at(1), jobs.BACKFILL_SOURCE)
    assert held.dry_run
    sent = run(held)
    assert len(sent) == 1, sent


def test_late_batch_seen_by_a_dry_run_then_go_live_sends_no_second_task() -> None:
    sent = run(Decider(P, at(1), dry_run=True))
    assert len(sent) == 1, sent
