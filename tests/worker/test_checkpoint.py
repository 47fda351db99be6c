"""Checkpointed evaluation is a full replay, exactly: the contract of issue #13.

A batch whose events all come after a lead's checkpoint continues the replay from it;
anything else replays the whole log. Whatever the history, delivery order, batching,
duplicates, late events and the `now` of each batch, a store that continues checkpoints
must write what a store that replays every lead from scratch writes: the same state
records, due times, CRM actions and outbox, batch after batch.
"""

from __future__ import annotations

import json
import random
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rules.counters import LoggedEvent
from rules.events import Crm, Event, EventType
from rules.lifecycle import evaluate
from rules.policy import parse_policy
from rules.running import Running, can_resume, decode_checkpoint, encode_checkpoint
from tests.rules_helpers import at
from tests.worker.test_properties import KINDS as PROPERTY_KINDS
from worker import checkpoint
from worker.decide import Decider
from worker.eventlog import to_logged
from worker.keys import ACTIONS_KEY, CHECKPOINT_PREFIX, checkpoint_key, lead_key, state_key
from worker.policyfile import default_policy
from worker.stats import from_aggregates, migrate, scan
from worker.store import LeadStore

P = default_policy()
DAY = 86_400_000
# The property tests' mix, and what they leave out: explicit follow-ups, reasons, objections, re-consent.
KINDS: list[tuple[str, dict[str, Any]]] = [
    *PROPERTY_KINDS,
    ("email_sent", {"follow_up": True}),
    ("not_interested", {"reason": "timing"}),
    ("do_not_contact", {"channels": ["email"]}),
    ("do_not_contact", {"channels": ["phone"]}),
    ("consent_given", {}),
]
# (kind, minute of the 40 days, lead)
event_st = st.tuples(st.integers(0, len(KINDS) - 1), st.integers(0, 60 * 24 * 40), st.sampled_from(["A", "B"]))


def build(raw: list[tuple[int, int, str]], kinds: list[tuple[str, dict[str, Any]]] = KINDS) -> list[Event]:
    out = []
    for n, (kind, minute, lead) in enumerate(raw):
        etype, data = kinds[kind]
        out.append(Event(f"e{n}", EventType(etype), Crm.HUBSPOT, lead, at(0) + minute * 60_000, dict(data)))
    return out


def dump(conn: fakeredis.FakeRedis) -> dict[str, Any]:
    """Everything the store wrote but the checkpoints (the one thing allowed to differ)."""
    out: dict[str, Any] = {}
    for key in conn.keys("*"):
        name = key.decode()
        # Checkpoints, and the aggregates whose rows they hold, are what the reference lacks.
        if name.startswith((CHECKPOINT_PREFIX, "pruner:metrics", "pruner:stats")):
            continue
        kind = conn.type(key).decode()
        if kind == "string":
            out[name] = conn.get(key)
        elif kind == "list":
            out[name] = conn.lrange(key, 0, -1)
        elif kind == "zset":
            out[name] = conn.zrange(key, 0, -1, withscores=True)
        else:
            out[name] = kind
    return out


def deliveries(events: list[Event], seed: int) -> list[tuple[list[Event], int]]:
    """Cut a mostly in-order stream (with late events and redeliveries) into batches, each with its `now`."""
    rng = random.Random(seed)
    stream = sorted(events, key=lambda e: e.occurred_ms)
    for _ in range(len(stream) // 8):  # some events arrive late
        i, j = rng.randrange(len(stream)), rng.randrange(len(stream))
        stream[i], stream[j] = stream[j], stream[i]
    again = rng.sample(stream, len(stream) // 6)  # and some twice, some under a later date
    stream += [e._replace(occurred_ms=e.occurred_ms + rng.choice([0, 3_600_000])) for e in again]
    out, i = [], 0
    while i < len(stream):
        n = rng.randint(1, 6)
        batch = stream[i : i + n]
        i += n
        # `now` is mostly just after the batch's newest event, sometimes before it (an
        # event dated in the future), sometimes days later (a quiet spell).
        newest = max(e.occurred_ms for e in batch)
        now = newest + rng.choice([0, 60_000, 3 * DAY, 20 * DAY, -DAY])
        out.append((batch, now))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(event_st, min_size=6, max_size=50),
    seed=st.integers(0, 10**6),
    sweep=st.booleans(),
    task=st.booleans(),
)
def test_continuing_checkpoints_writes_what_full_replays_write(
    raw: list[tuple[int, int, str]], seed: int, sweep: bool, task: bool
) -> None:
    events = build(raw)
    live, reference = fakeredis.FakeRedis(), fakeredis.FakeRedis()
    live_store, reference_store = LeadStore(live), LeadStore(reference)
    paths: dict[str, int] = {}
    for batch, now in deliveries(events, seed):
        result = live_store.apply_batch(batch, Decider(P, now, grace_from_task=task))
        for path, n in result.paths.items():
            paths[path] = paths.get(path, 0) + n
        # The reference forgets every checkpoint: each lead is replayed from its log.
        for key in reference.keys(CHECKPOINT_PREFIX + "*"):
            reference.delete(key)
        reference_store.apply_batch(batch, Decider(P, now, grace_from_task=task))
        if sweep:
            later = now + 7 * DAY
            for store in (live_store, reference_store):
                store.reevaluate(store.due(later, 100), Decider(P, later, grace_from_task=task))
        assert dump(live) == dump(reference)
    # The aggregates kept batch by batch are what a scan of every lead finds.
    assert from_aggregates(live).to_json() == scan(live).to_json()
    # Not vacuous: with distinct instants in order, most evaluations continue a checkpoint
    # (tests below pin which path each case takes).
    event("paths: " + ",".join(sorted(paths)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(event_st, min_size=1, max_size=40),
    cut=st.integers(0, 60 * 24 * 40),
    later=st.integers(0, 60 * 24 * 60),
    listed=st.booleans(),
)
def test_a_resumed_replay_is_the_full_replay(
    raw: list[tuple[int, int, str]], cut: int, later: int, listed: bool
) -> None:
    """The pure core: checkpoint at `now1`, continue with the events after it at `now2`."""
    history = [to_logged(e) for e in build(raw)]
    now1, now2 = at(0) + cut * 60_000, at(0) + max(cut, later) * 60_000
    first = evaluate([e for e in history if e.occurred_ms <= now1], P, now1, suppressed=listed)
    full = evaluate(history, P, now2, suppressed=listed)
    ck = first.checkpoint
    if ck is None or not can_resume(ck, now2, listed):
        return
    rest = [e for e in history if e.occurred_ms > ck.at_ms]
    if ck.supersedes(rest):
        return  # another version of an activity the checkpoint counted: the decider replays instead
    resumed = evaluate(rest, P, now2, suppressed=listed, since=_copy(ck))
    assert resumed.resumed
    assert summary(resumed) == summary(full)


def _copy(run: Running) -> Running:
    copy = decode_checkpoint(encode_checkpoint(run))
    assert copy is not None
    return copy


def summary(ev: Any) -> tuple[Any, ...]:
    return (
        ev.state,
        ev.loss_reason,
        [(d.name, d.to_json()) for d in ev.decisions],
        ev.counters,
        ev.next_due_ms,
        ev.as_of_ms,
        ev.progress,
        ev.checkpoint,
    )


def history_of(n: int, lead: str = "L", start: int = 0) -> list[Event]:
    kinds = ["email_sent", "call_attempted", "email_replied", "time_logged", "meeting_held"]
    out = []
    for i in range(start, start + n):
        kind = kinds[i % len(kinds)]
        data = {"minutes": 5} if kind == "time_logged" else {}
        out.append(Event(f"h{i}", EventType(kind), Crm.HUBSPOT, lead, at(0) + i * 3_600_000, data))
    return out


def test_live_batches_continue_the_checkpoint_and_late_ones_replay() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = history_of(30)
    first = store.apply_batch(events[:20], Decider(P, at(2)))
    assert first.paths == {"new": 1}
    live = store.apply_batch(events[20:], Decider(P, at(2)))
    assert live.paths == {"checkpoint": 1}
    late = Event("late", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(0) + 90 * 60_000, {})
    assert store.apply_batch([late], Decider(P, at(2))).paths == {"replay": 1}
    again = store.apply_batch(events[25:] + [late], Decider(P, at(2)))
    assert (again.duplicates, again.added) == (6, 0)  # redeliveries found in the log and the checkpoint's tail
    # An old redelivery with a new event: the log is read for the duplicate, the replay still continues.
    mixed = store.apply_batch([events[3], *history_of(1, start=40)], Decider(P, at(3)))
    assert (mixed.duplicates, mixed.added, mixed.paths) == (1, 1, {"checkpoint": 1})
    assert len(store.history("hubspot", "L") or []) == 32


def test_an_event_dated_after_now_waits_in_the_checkpoint_tail() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = history_of(10)
    store.apply_batch(events[:5], Decider(P, at(0, hours=4)))
    ahead = store.apply_batch(events[5:], Decider(P, at(0, hours=6)))  # events 7..9 are dated after now
    assert ahead.paths == {"checkpoint": 1}
    stored = checkpoint.unpack(conn.get(checkpoint_key("hubspot", "L")))
    assert stored is not None and stored.at_ms == at(0, hours=6)
    assert [e.occurred_ms for e in stored.events_after()] == [at(0, hours=h) for h in (7, 8, 9)]
    # Redelivered, they are duplicates even though the log was not read.
    assert store.apply_batch(events[8:], Decider(P, at(1))).duplicates == 2


def test_another_policy_replays_the_log_instead_of_continuing() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = [*history_of(4)]
    store.apply_batch(events[:2], Decider(P, at(1)))
    stricter = parse_policy('{"rules": {"repeated_no": {"min_not_interested": 1}}}', P)
    no = Event("no", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(1, hours=1), {})
    result = store.apply_batch([no], Decider(stricter, at(2)))
    assert result.paths == {"replay": 1}
    state = store.state("hubspot", "L")
    assert state is not None and state["state"] == "LOST"


def test_a_store_written_before_checkpoints_is_read_and_checkpointed_on_first_touch() -> None:
    """Migration: logs and state records as the previous version wrote them, no checkpoints."""
    conn = fakeredis.FakeRedis()
    old = LeadStore(conn)
    events = history_of(12) + [
        Event("n1", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(0, hours=13), {}),
        Event("n2", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(0, hours=14), {}),
    ]
    old.apply_batch(events, Decider(P, at(1)))
    before = old.state("hubspot", "L")
    assert before is not None and before["state"] == "LOST"
    # What the previous version left: the same log bytes and state record, no checkpoint,
    # and `acted` as it wrote it (by `rule:state:time` key only, for the oldest stores).
    conn.delete(checkpoint_key("hubspot", "L"))
    legacy = dict(before, acted=[f"repeated_no:LOST:{at(0, hours=14)}"])
    conn.set(state_key("hubspot", "L"), json.dumps(legacy))
    log_before = conn.get(lead_key("hubspot", "L"))
    actions_before = conn.llen(ACTIONS_KEY)
    more = Event("m", EventType.EMAIL_SENT, Crm.HUBSPOT, "L", at(1, hours=1), {})
    result = LeadStore(conn).apply_batch([more], Decider(P, at(2)))
    assert result.paths == {"replay": 1}
    assert conn.get(checkpoint_key("hubspot", "L")) is not None
    assert conn.get(lead_key("hubspot", "L")) == log_before + conn.get(lead_key("hubspot", "L"))[len(log_before) :]
    assert conn.llen(ACTIONS_KEY) == actions_before  # the loss was acted on already: not sent again
    later = Event("m2", EventType.EMAIL_SENT, Crm.HUBSPOT, "L", at(1, hours=2), {})
    assert LeadStore(conn).apply_batch([later], Decider(P, at(2))).paths == {"checkpoint": 1}
    after = LeadStore(conn).state("hubspot", "L")
    assert after is not None and after["state"] == "LOST"


def test_a_checkpoint_of_another_shape_is_replayed_not_misread() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(history_of(5), Decider(P, at(1)))
    conn.set(checkpoint_key("hubspot", "L"), b"\x93\x07garbage")
    result = store.apply_batch(history_of(2, start=30), Decider(P, at(2)))
    assert result.paths == {"replay": 1}
    assert checkpoint.unpack(conn.get(checkpoint_key("hubspot", "L"))) is not None


def test_checkpoint_is_compact() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(history_of(50), Decider(P, at(3)))
    size = len(conn.get(checkpoint_key("hubspot", "L")) or b"")
    assert 0 < size < 600, size  # running state, rule progress, aggregate row


def logged(events: list[Event]) -> list[LoggedEvent]:
    return [to_logged(e) for e in events]


def test_a_conflict_on_one_lead_re_decides_that_lead_only() -> None:
    """Contention: another worker writes lead L7 while this batch of 20 leads is being decided."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    leads = [f"L{i}" for i in range(20)]
    store.apply_batch([e for lead in leads for e in history_of(3, lead)], Decider(P, at(1)))
    decided: list[str] = []
    inner = Decider(P, at(2))

    def decide(view: Any) -> Any:
        decided.append(view.lead_id)
        if decided == ["L0"]:  # meanwhile, another worker's batch lands on L7
            LeadStore(conn).apply_batch(history_of(1, "L7", start=50), Decider(P, at(2)))
        return inner(view)

    batch = [e for lead in leads for e in history_of(1, lead, start=60)]
    result = store.apply_batch(batch, decide)
    assert (result.conflicts, result.redecided) == (1, 1)
    assert sorted(decided) == sorted([*leads, "L7"])
    assert result.added == 20
    # And what was written is what deciding everything afresh gives.
    reference = fakeredis.FakeRedis()
    ref_store = LeadStore(reference)
    ref_store.apply_batch([e for lead in leads for e in history_of(3, lead)], Decider(P, at(1)))
    ref_store.apply_batch(history_of(1, "L7", start=50), Decider(P, at(2)))
    ref_store.apply_batch(batch, Decider(P, at(2)))
    assert dump(conn) == dump(reference)


def test_a_redelivery_under_a_later_date_is_still_a_duplicate() -> None:
    """Salesforce re-sends an edited Task under its id, dated when it was edited."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    call = Event("task-1", EventType.CALL_ATTEMPTED, Crm.SALESFORCE, "S", at(1), {})
    store.apply_batch([call], Decider(P, at(1)))
    for later in (at(1, hours=1), at(3)):
        again = store.apply_batch([call._replace(occurred_ms=later)], Decider(P, later))
        assert (again.added, again.duplicates) == (0, 1)
    assert len(store.history("salesforce", "S") or []) == 1


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_redelivery_under_a_later_date_among_new_events_of_its_lead_is_still_a_duplicate(position: int) -> None:
    """The probe looks for each of a lead's keys in its log, wherever the redelivery is in the batch."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    calls = [Event(f"task-{n}", EventType.CALL_ATTEMPTED, Crm.SALESFORCE, "S", at(1, hours=n), {}) for n in range(3)]
    store.apply_batch(calls, Decider(P, at(1, hours=3)))
    fresh = [Event(f"mail-{n}", EventType.EMAIL_SENT, Crm.SALESFORCE, "S", at(2, hours=n), {}) for n in range(2)]
    batch = list(fresh)
    batch.insert(position, calls[1]._replace(occurred_ms=at(2, hours=5)))
    again = store.apply_batch(batch, Decider(P, at(2, hours=6)))
    assert (again.added, again.duplicates) == (2, 1)
    assert len(store.history("salesforce", "S") or []) == 5


def test_aggregates_follow_forgets_merges_and_erasures_and_a_store_from_before_them_is_migrated() -> None:
    conn = fakeredis.FakeRedis()
    key = b"k" * 32
    store = LeadStore(conn, key)
    decide = Decider(P, at(3), suppression_key=key)
    profile = [
        Event(f"p{lead}", EventType.LEAD_PROFILE, Crm.HUBSPOT, lead, at(0), {"source": src, "segment": "SMB"})
        for lead, src in (("A", "Web"), ("B", "Ads"), ("C", "Web"), ("D", "Ads"))
    ]
    nos = [
        Event(f"n{k}{lead}", EventType.NOT_INTERESTED, Crm.HUBSPOT, lead, at(1, hours=k), {})
        for lead in "AB"
        for k in (1, 2)
    ]
    store.apply_batch([*profile, *nos], decide)
    assert from_aggregates(conn).to_json() == scan(conn).to_json()
    assert from_aggregates(conn).outcomes == {"lost": 2, "open": 2}
    store.forget("hubspot", "C")
    store.merge("hubspot", "A", ["B"], decide)
    erase = Event("x", EventType.ERASURE_REQUESTED, Crm.HUBSPOT, "D", at(2), {})
    store.apply_batch([erase], decide)
    assert from_aggregates(conn).to_json() == scan(conn).to_json()
    assert from_aggregates(conn).leads == 1
    # A store from before the aggregates: no checkpoints, no aggregates.
    for name in conn.keys("pruner:ck:*") + conn.keys("pruner:stats:*"):
        conn.delete(name)
    assert migrate(conn, lambda leads: store.reevaluate(leads, decide)) == 1
    assert from_aggregates(conn).to_json() == scan(conn).to_json()
    assert migrate(conn, lambda leads: store.reevaluate(leads, decide)) == 0  # counted once only
    assert from_aggregates(conn).leads == 1
