"""Held decisions (worker/held.py): a live backfill acts only once the whole history is in."""

from __future__ import annotations

import json
from typing import Any

import fakeredis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker import jobs
from worker.backfill_sinks import SOURCE as BACKFILL_SOURCE
from worker.config import Config
from worker.held import release_held
from worker.keys import DUE_KEY
from worker.store import LeadStore

LIVE = Config.from_env({"REDIS_URL": "redis://localhost:6379/0", "PRUNER_DRY_RUN": "0"})


def outbox(conn: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange("pruner:outbox:hubspot", 0, -1)]


def emails(lead: str) -> list[Event]:
    return [Event(f"{lead}-e{i}", EventType.EMAIL_SENT, Crm.HUBSPOT, lead, at(0) + i * 60_000, {}) for i in range(15)]


def test_a_live_backfill_acts_on_a_lead_only_once_its_whole_history_is_in() -> None:
    """The bug the full-scale e2e found: a backfill reads emails before replies, and the workers
    marked leads lost in the CRM on the emails alone, before their replies were applied."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    now = at(60)
    # The backfill's first object type: every email, no reply yet -> a break-up, on paper.
    store.apply_batch(emails("REPLIED") + emails("COLD"), jobs.decider(LIVE, now, BACKFILL_SOURCE))
    assert (store.state("hubspot", "REPLIED") or {})["state"] == "BREAKUP_DUE"
    assert outbox(conn) == []  # held: no task for a lead whose reply is still to come
    # Its next object type: REPLIED's reply, after the last email.
    reply = Event("REPLIED-r", EventType.EMAIL_REPLIED, Crm.HUBSPOT, "REPLIED", at(0) + 20 * 60_000, {})
    store.apply_batch([reply], jobs.decider(LIVE, now, BACKFILL_SOURCE))
    assert outbox(conn) == [] and (store.state("hubspot", "REPLIED") or {})["state"] == "ACTIVE"

    # The backfill is applied: it releases what the workers held; the next sweep acts, live.
    assert release_held(conn, now) == 2
    assert conn.zscore(DUE_KEY, "hubspot:COLD") == now
    store.reevaluate(store.due(now, 10), jobs.decider(LIVE, now))
    # COLD's break-up is sent (the task clock then runs its grace); REPLIED got nothing it should not.
    assert [(a["lead_id"], a["kind"]) for a in outbox(conn)] == [("COLD", "breakup_task")]
    assert (store.state("hubspot", "COLD") or {})["state"] == "BREAKUP_DUE"
    assert release_held(conn, now) == 0  # acted on: nothing held any more
    store.reevaluate([("hubspot", "COLD"), ("hubspot", "REPLIED")], jobs.decider(LIVE, at(61)))
    assert len(outbox(conn)) == 1  # once


def test_webhooks_are_decided_live_while_a_backfill_runs() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(emails("HOT"), jobs.decider(LIVE, at(1), "events"))
    assert [a["kind"] for a in outbox(conn)] == ["breakup_task"]


def test_held_decisions_are_acted_on_within_the_hour_if_nothing_releases_them() -> None:
    """A backfill command killed after its jobs were applied (found by a second reader): its held
    break-up had no due time, and nothing would ever have created its task."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    now = at(60)
    store.apply_batch(emails("B"), jobs.decider(LIVE, now, BACKFILL_SOURCE))
    assert outbox(conn) == [] and conn.zscore(DUE_KEY, "hubspot:B") == now + jobs.HELD_FOR_MS
    store.reevaluate(store.due(now + jobs.HELD_FOR_MS - 1, 10), jobs.decider(LIVE, now + jobs.HELD_FOR_MS - 1))
    assert outbox(conn) == []
    later = now + jobs.HELD_FOR_MS
    store.reevaluate(store.due(later, 10), jobs.decider(LIVE, later))
    assert [(a["lead_id"], a["kind"]) for a in outbox(conn)] == [("B", "breakup_task")]
    assert conn.zscore(DUE_KEY, "hubspot:B") is None  # waiting for its task, nothing held


def test_a_dry_runs_actions_mark_the_store_for_the_live_workers() -> None:
    from worker.upgrades import DRY_RUN_MARK

    conn = fakeredis.FakeRedis()
    dry = Config.from_env({"REDIS_URL": "redis://localhost:6379/0", "PRUNER_DRY_RUN": "1"})
    action: Any = {"id": "hubspot:L:x", "kind": "breakup_task", "crm": "hubspot", "lead_id": "L", "dry_run": True}
    jobs.request_drains(conn, LIVE, [{**action, "dry_run": True}])  # a live backfill's held action
    assert not conn.exists(DRY_RUN_MARK)
    jobs.request_drains(conn, dry, [action])
    assert conn.exists(DRY_RUN_MARK)
