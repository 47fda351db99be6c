"""The lead store and counters: dedup, order independence, what each counter means."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.counters import fold
from rules.events import Event, parse_event
from tests.helpers import event
from worker import eventlog
from worker.keys import lead_key
from worker.store import LeadStore

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOW_MS = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)


def ev(etype: str, minutes: int, lead: str = "L", **kw: Any) -> Event:
    return parse_event(event(etype, lead_id=lead, at=T0 + timedelta(minutes=minutes), **kw), "e", NOW_MS)


def counters(store: LeadStore, lead: str = "L") -> dict[str, int]:
    history = store.history("hubspot", lead)
    assert history is not None
    return fold(history).public()


HISTORY = [
    ev("email_sent", 0, event_id="a"),
    ev("email_sent", 10, event_id="b"),
    ev("call_attempted", 20, event_id="c"),
    ev("email_replied", 30, event_id="d"),
    ev("email_sent", 40, event_id="e"),
    ev("call_attempted", 50, event_id="f"),
    ev("time_logged", 55, event_id="g", data={"minutes": 30}),
    ev("not_interested", 60, event_id="h", data={"reason": "budget"}),
    ev("meeting_rescheduled", 70, event_id="i", data={"first_meeting": True}),
    ev("meeting_rescheduled", 80, event_id="j"),
]


def test_counters_follow_the_contract_names() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    store.apply_batch(HISTORY)
    assert counters(store) == {
        "outbound_touches": 5,
        "follow_ups_since_reply": 2,  # email e and call f came after reply d
        "replies": 1,
        "not_interested": 1,
        "follow_up_reschedules": 1,  # the first meeting's reschedule does not count
        "call_attempts": 2,
        "minutes_invested": 30,
        "connected_calls": 0,
        "emails_sent": 3,
        "bounces": 0,
        "meetings_booked": 0,
        "meetings_held": 0,
        "meetings_rescheduled": 2,
        "no_shows": 0,
        "decision_no": 0,
    }


def test_redelivered_events_are_acknowledged_not_counted() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    first = store.apply_batch(HISTORY)
    again = store.apply_batch(HISTORY[:4] + HISTORY[:2])
    assert (first.added, first.duplicates) == (10, 0)
    assert (again.added, again.duplicates) == (0, 6)
    assert counters(store)["outbound_touches"] == 5


def test_same_event_id_on_another_crm_is_a_different_event() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    a = parse_event(event(lead_id="L", event_id="x", crm="hubspot", at=T0), "e", NOW_MS)
    b = parse_event(event(lead_id="L", event_id="x", crm="salesforce", at=T0), "e", NOW_MS)
    assert store.apply_batch([a, b]).added == 2


def test_a_late_reply_resets_follow_ups_it_preceded() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    store.apply_batch([HISTORY[i] for i in (0, 1, 2, 4, 5)])
    assert counters(store)["follow_ups_since_reply"] == 4
    store.apply_batch([HISTORY[3]])  # the reply, delivered last, happened before e and f
    assert counters(store)["follow_ups_since_reply"] == 2


def test_unknown_lead_has_no_history() -> None:
    assert LeadStore(fakeredis.FakeRedis()).history("hubspot", "nobody") is None


def test_log_is_compact() -> None:
    conn = fakeredis.FakeRedis()
    LeadStore(conn).apply_batch([HISTORY[0]])
    assert len(conn.get(lead_key("hubspot", "L")) or b"") == 1 + 12  # a version byte, a record


def test_eventlog_round_trip() -> None:
    logged = [eventlog.to_logged(e) for e in HISTORY]
    assert eventlog.decode(eventlog.append(None, logged)) == logged


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(list(range(len(HISTORY)))),
    dups=st.lists(st.integers(0, len(HISTORY) - 1), max_size=8),
    cuts=st.lists(st.integers(1, len(HISTORY) + 8), max_size=4),
)
def test_any_order_any_duplicates_any_batching_same_counters(
    order: list[int], dups: list[int], cuts: list[int]
) -> None:
    expected_store = LeadStore(fakeredis.FakeRedis())
    expected_store.apply_batch(HISTORY)
    expected = fold(expected_store.history("hubspot", "L") or [])
    delivery = [HISTORY[i] for i in order] + [HISTORY[i] for i in dups]
    random.Random(len(cuts)).shuffle(delivery)
    store = LeadStore(fakeredis.FakeRedis())
    bounds = sorted({0, len(delivery), *[c for c in cuts if c < len(delivery)]})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        store.apply_batch(delivery[lo:hi])
    assert fold(store.history("hubspot", "L") or []) == expected


def test_a_sweep_releases_only_its_own_lock(monkeypatch: Any) -> None:
    from worker.config import Config
    from worker.jobs import SWEEP_LOCK, run_sweep

    conn = fakeredis.FakeRedis()
    config = Config.from_env({})
    conn.set(SWEEP_LOCK, "another sweep")
    assert run_sweep(conn, config, 0) == {"due": 0, "skipped": 1}
    assert conn.get(SWEEP_LOCK) == b"another sweep"  # a skipped sweep leaves the holder's lock
    conn.delete(SWEEP_LOCK)
    assert run_sweep(conn, config, 0)["due"] == 0 and not conn.exists(SWEEP_LOCK)  # its own: released

    def outlived(self: LeadStore, now_ms: int, limit: int) -> list[tuple[str, str]]:
        conn.set(SWEEP_LOCK, "the next sweep")  # this sweep's lock expired; another took it
        return []

    monkeypatch.setattr(LeadStore, "due", outlived)
    run_sweep(conn, config, 0)
    assert conn.get(SWEEP_LOCK) == b"the next sweep"


def test_a_drain_releases_only_its_own_lock() -> None:
    import json

    from worker.actions import drain, lock_key
    from worker.crm.base import ActionOutcome
    from worker.keys import outbox_key, state_key

    class Racy(fakeredis.FakeRedis):
        """The drain's lock expires and the next drain takes it just as the drain releases it."""

        def take_over(self) -> None:
            if super().get(lock_key("hubspot")) not in (None, b"the next drain"):
                super().set(lock_key("hubspot"), "the next drain")

        def get(self, name: Any) -> Any:
            value = super().get(name)  # a release that reads first, then deletes
            if name == lock_key("hubspot"):
                self.take_over()
            return value

        def eval(self, *args: Any) -> Any:  # a release in one step: nothing gets in between
            if lock_key("hubspot") in args:
                self.take_over()
            return super().eval(*args)

    conn = Racy()
    conn.set(state_key("hubspot", "L1"), json.dumps({"state": "LOST"}))
    action = {"id": "hubspot:L1:x#1", "kind": "mark_lost", "crm": "hubspot", "lead_id": "L1"}
    conn.rpush(outbox_key("hubspot"), json.dumps(action))

    class Executor:
        def execute(self, actions: list[dict[str, Any]]) -> list[ActionOutcome]:
            return [ActionOutcome(a["id"], True, "") for a in actions]

    assert drain(conn, "hubspot", Executor)["executed"] == 1
    assert conn.get(lock_key("hubspot")) == b"the next drain"  # not released by the drain it outlived
