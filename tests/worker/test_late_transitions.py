"""Late batches, merges and state records from older versions never re-send a decision's action (#15)."""

from __future__ import annotations

import json

import fakeredis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker import compression
from worker.decide import Decider
from worker.keys import state_key
from worker.policyfile import default_policy
from worker.store import LeadStore

P = default_policy()
NOW = at(30)


def ev(event_id: str, etype: str, day: float, lead: str = "L1", **data: object) -> Event:
    return Event(event_id, EventType(etype), Crm.HUBSPOT, lead, at(day), data)


def kinds(store: LeadStore) -> list[tuple[str, str, str]]:
    return [(a["lead_id"], a["kind"], a["rule"]) for a in store.actions()]


def test_a_late_batch_that_adds_an_earlier_episode_and_moves_the_firing_time_sends_nothing_again() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    # Follow-up meetings pushed back on days 6 and 7: a break-up task is asked for.
    store.apply_batch([ev("r6", "meeting_rescheduled", 6), ev("r7", "meeting_rescheduled", 7)], Decider(P, NOW))
    assert kinds(store) == [("L1", "breakup_task", "pushed_back")]
    # Delivered late: two "no"s and a reply earlier (LOST on day 2, back to ACTIVE on day 3: an
    # episode before), and a reschedule on day 4 that makes pushed_back fire on day 6, not 7.
    late = [ev("n1", "not_interested", 1), ev("n2", "not_interested", 2), ev("y3", "email_replied", 3)]
    store.apply_batch([*late, ev("r4", "meeting_rescheduled", 4)], Decider(P, NOW))
    record = store.state("hubspot", "L1") or {}
    assert record["state"] == "BREAKUP_DUE"
    assert [d["rule"] for d in record["decisions"]] == ["repeated_no", "reply_resets", "pushed_back"]
    assert kinds(store) == [("L1", "breakup_task", "pushed_back")]  # the rep was told once


def test_a_real_second_cycle_after_the_acted_decision_is_still_acted_on() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    store.apply_batch([ev("r6", "meeting_rescheduled", 6), ev("r7", "meeting_rescheduled", 7)], Decider(P, NOW))
    # Later in time this time: a reply after the break-up, then pushed back twice again.
    again = [ev("y8", "email_replied", 8), ev("r9", "meeting_rescheduled", 9), ev("r10", "meeting_rescheduled", 10)]
    store.apply_batch(again, Decider(P, NOW))
    assert kinds(store) == [("L1", "breakup_task", "pushed_back"), ("L1", "breakup_task", "pushed_back")]


def test_a_merged_records_acted_decisions_carry_into_the_survivor() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    decide = Decider(P, NOW)
    store.apply_batch([ev("a1", "not_interested", 1, "A"), ev("a2", "not_interested", 2, "A")], decide)
    store.apply_batch([ev("b1", "email_sent", 1, "B")], decide)
    assert kinds(store) == [("A", "mark_lost", "repeated_no")]
    store.merge("hubspot", "B", ["A"], decide)  # A merged into B in the CRM
    record = store.state("hubspot", "B") or {}
    assert record["state"] == "LOST"
    assert kinds(store) == [("A", "mark_lost", "repeated_no")]  # B is not told what A was told


def test_a_state_record_written_by_an_older_version_converts_without_re_sending() -> None:
    # Versions before 2026-11-25 kept only `rule:STATE:time` keys in `acted`, and no checkpoint.
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch([ev("r6", "meeting_rescheduled", 6), ev("r7", "meeting_rescheduled", 7)], Decider(P, NOW))
    record = json.loads(compression.unpack(conn.get(state_key("hubspot", "L1")) or b"{}"))
    record["acted"] = [k for k in record["acted"] if "@" not in k]  # drop the identity names
    for key in [*conn.scan_iter("pruner:ck:*")]:
        conn.delete(key)
    conn.set(state_key("hubspot", "L1"), json.dumps(record))
    conn.delete("pruner:actions")
    # A late batch moves the firing time: the old key no longer matches, the identity was never kept.
    store.apply_batch([ev("r4", "meeting_rescheduled", 4)], Decider(P, NOW))
    assert kinds(store) == []
