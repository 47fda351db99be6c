"""Bounded lead logs (issue #13): events past the retention horizon are folded into a running state.

What folding must keep: every counter, episode and decision (a replay from the fold is the
replay from the first event), the profile and emails an erasure needs, and the equality of the
two evaluation paths. What it gives up, on purpose: an event dated before a lead's fold that
arrives now is counted as past the horizon and ignored.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import fakeredis
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.errors import PolicyError
from rules.events import Crm, Event, EventType, versioned
from rules.policy import parse_policy
from rules.running import decode_running
from rules.states import covered_channels
from tests.rules_helpers import at
from tests.worker.test_checkpoint import KINDS as CHECKPOINT_KINDS
from tests.worker.test_checkpoint import build as build_from
from tests.worker.test_checkpoint import deliveries, dump
from worker import actionrecord, compression, eventlog
from worker.checkpoint import UNKNOWN, pack, unpack
from worker.decide import FOLD_SLACK_MS, Decider
from worker.keys import ACTIONS_KEY, CHECKPOINT_PREFIX, DUE_KEY, checkpoint_key, lead_key, state_key
from worker.leaddoc import lead_document
from worker.policyfile import default_policy
from worker.store import LeadStore
from worker.suppression import SUPPRESSED_KEY, email_hash

DAY = 86_400_000
HORIZON_DAYS = 30
FOLDING = replace(default_policy(), retention_horizon_days=HORIZON_DAYS)
KEEPING = replace(default_policy(), retention_horizon_days=0)
KEY = b"k" * 32
# The checkpoint tests' mix without versioned records: a later version of an activity folded
# away is past the horizon by design, which a store that keeps everything would count.
PLAIN = [(k, d) for k, d in CHECKPOINT_KINDS if "~r" not in d]
SPAN_MINUTES = 60 * 24 * 150
event_st = st.tuples(st.integers(0, len(PLAIN) - 1), st.integers(0, SPAN_MINUTES), st.sampled_from(["A", "B"]))


def build(raw: list[tuple[int, int, str]]) -> list[Event]:
    return build_from(raw, PLAIN)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(event_st, min_size=6, max_size=60), seed=st.integers(0, 10**6), task=st.booleans())
def test_folding_stores_write_the_same_whichever_path_they_take(
    raw: list[tuple[int, int, str]], seed: int, task: bool
) -> None:
    """Continuing checkpoints or replaying from the fold: the same logs (folds too), states and actions."""
    live, reference = fakeredis.FakeRedis(), fakeredis.FakeRedis()
    stores = LeadStore(live), LeadStore(reference)
    for batch, now in deliveries(build(raw), seed):
        stores[0].apply_batch(batch, Decider(FOLDING, now, grace_from_task=task))
        for key in reference.keys(CHECKPOINT_PREFIX + "*"):
            reference.delete(key)
        stores[1].apply_batch(batch, Decider(FOLDING, now, grace_from_task=task))
        later = now + 40 * DAY  # a sweep long after: it folds too
        for store in stores:
            store.reevaluate(store.due(later, 100), Decider(FOLDING, later, grace_from_task=task))
        assert dump(live) == dump(reference)


def in_time(events: list[Event], seed: int) -> list[tuple[list[Event], int]]:
    """Deliveries at most two days late (webhook retries), each batch with its `now`."""
    rng = random.Random(seed)
    stream = sorted(events, key=lambda e: e.occurred_ms + rng.randint(0, 2 * DAY))
    out, i = [], 0
    while i < len(stream):
        n = rng.randint(1, 5)
        batch = stream[i : i + n]
        i += n
        now = max(e.occurred_ms for e in batch) + 2 * DAY + rng.choice([0, 60_000, 3 * DAY])
        out.append((batch, now))
    return out


def decided(conn: fakeredis.FakeRedis) -> dict[str, Any]:
    """What a lead's story decided: state records, due times, actions (not how the log is kept)."""
    return {k: v for k, v in dump(conn).items() if not k.startswith(("pruner:lead:", CHECKPOINT_PREFIX))}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(event_st, min_size=6, max_size=60), seed=st.integers(0, 10**6))
def test_folding_decides_what_keeping_every_event_decides_when_nothing_arrives_past_the_horizon(
    raw: list[tuple[int, int, str]], seed: int
) -> None:
    folding, keeping = fakeredis.FakeRedis(), fakeredis.FakeRedis()
    folded = 0
    for batch, now in in_time(build(raw), seed):
        result = LeadStore(folding).apply_batch(batch, Decider(FOLDING, now))
        assert result.retention["past_horizon"] == 0
        folded += result.retention["folded"]
        LeadStore(keeping).apply_batch(batch, Decider(KEEPING, now))
        assert decided(folding) == decided(keeping)
    end = max(e.occurred_ms for e in build(raw)) + 200 * DAY
    for conn, policy in ((folding, FOLDING), (keeping, KEEPING)):
        store = LeadStore(conn)
        store.reevaluate([("hubspot", "A"), ("hubspot", "B")], Decider(policy, end))
    assert decided(folding) == decided(keeping)


def touches(n: int, lead: str = "L", every_hours: int = 36) -> list[Event]:
    kinds = ["email_sent", "call_attempted", "email_sent", "email_replied", "time_logged"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        data = {"minutes": 5} if kind == "time_logged" else {}
        out.append(Event(f"t{i}", EventType(kind), Crm.HUBSPOT, lead, at(0) + i * every_hours * 3_600_000, data))
    return out


def feed(store: LeadStore, events: list[Event], policy: Any = FOLDING) -> None:
    """One event a batch, each processed an hour after it happened (live webhooks)."""
    for event in events:
        store.apply_batch([event], Decider(policy, event.occurred_ms + 3_600_000))


def test_a_log_keeps_the_horizon_and_the_fold_counts_the_rest() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = touches(500)  # two years, one touch every 36 hours
    feed(store, events)
    whole = store.log("hubspot", "L")
    assert whole is not None and whole.fold is not None
    now = events[-1].occurred_ms + 3_600_000
    oldest = min(e.occurred_ms for e in whole.events)
    # Kept: the horizon, plus at most the slack that waits before a fold is worth a rewrite.
    assert now - HORIZON_DAYS * DAY - FOLD_SLACK_MS <= oldest
    assert len(whole.events) < 500 // 10
    assert whole.fold.events + len(whole.events) == 500
    # Nothing was lost from the counts: the same as a store that keeps everything.
    keeping = LeadStore(fakeredis.FakeRedis())
    feed(keeping, events, KEEPING)
    kept_whole = keeping.log("hubspot", "L")
    assert kept_whole is not None and kept_whole.fold is None
    assert whole.counters() == kept_whole.counters()
    doc = lead_document("hubspot", "L", whole, store.state("hubspot", "L"), store.checkpoint("hubspot", "L"))
    assert (doc["events"], doc["events_folded"]) == (500, whole.fold.events)
    assert doc["counters"]["outbound_touches"] == 300
    assert store.state("hubspot", "L") == keeping.state("hubspot", "L")
    # And it stays small: its size does not grow with the story (a log that keeps all is 5x bigger).
    size = len(conn.get(lead_key("hubspot", "L")) or b"")
    assert size * 5 < len(keeping.redis.get(lead_key("hubspot", "L")) or b"")
    feed(store, touches(1000)[500:])
    assert len(conn.get(lead_key("hubspot", "L")) or b"") < size * 1.2


def test_an_event_dated_before_the_fold_is_counted_and_ignored() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = touches(200)
    feed(store, events)
    before = conn.get(lead_key("hubspot", "L"))
    state = store.state("hubspot", "L")
    stale = Event("very-late", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(1), {})
    now = events[-1].occurred_ms + 3_600_000
    result = store.apply_batch([stale, *[e for e in events[-3:]]], Decider(FOLDING, now))
    assert (result.added, result.duplicates, result.retention["past_horizon"]) == (0, 3, 1)
    assert conn.get(lead_key("hubspot", "L")) == before
    assert store.state("hubspot", "L") == state


def test_an_erasure_finds_the_emails_of_folded_profile_events() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, KEY)
    profile = Event("p", EventType.LEAD_PROFILE, Crm.HUBSPOT, "L", at(0), {"email": "old@example.com"})
    events = [profile, *touches(120)[1:]]
    for event in events:
        store.apply_batch([event], Decider(FOLDING, event.occurred_ms + 3_600_000, suppression_key=KEY))
    whole = store.log("hubspot", "L")
    assert whole is not None and whole.fold is not None and whole.fold.emails == ["old@example.com"]
    assert b"old@example.com" not in b"".join(eventlog.encode(whole.events).split(b"\0"))
    end = events[-1].occurred_ms + 2 * 3_600_000
    erase = Event("x", EventType.ERASURE_REQUESTED, Crm.HUBSPOT, "L", end, {})
    store.apply_batch([erase], Decider(FOLDING, end + 1, suppression_key=KEY))
    assert conn.sismember(SUPPRESSED_KEY, email_hash(KEY, "old@example.com"))
    assert conn.get(lead_key("hubspot", "L")) is None


def test_a_store_from_before_folding_is_folded_on_first_touch() -> None:
    """A version-1 log and a checkpoint without `oldest`: read, folded, and then live again."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = touches(200)
    feed(store, events[:150], KEEPING)  # written by a version that kept everything
    ck = unpack(conn.get(checkpoint_key("hubspot", "L")))
    assert ck is not None and (conn.get(lead_key("hubspot", "L")) or b"")[:1] == eventlog.VERSION
    raw = bytes(ck.running)
    old = pack(ck.policy, ck.at_ms, raw, ck.events_after(), ck.progress, ck.row)
    stored = unpack(old)
    assert stored is not None
    # As a writer from before folding: the record's first 7 fields, without `oldest` (nor `due`).
    conn.set(
        checkpoint_key("hubspot", "L"), msgspec.msgpack.encode(msgspec.msgpack.decode(compression.unpack(old))[:7])
    )
    assert unpack(conn.get(checkpoint_key("hubspot", "L"))) is not None
    assert unpack(conn.get(checkpoint_key("hubspot", "L"))).oldest == UNKNOWN  # type: ignore[union-attr]
    result = store.apply_batch([events[150]], Decider(FOLDING, events[150].occurred_ms + 3_600_000))
    assert result.retention["folded"] > 0
    assert (conn.get(lead_key("hubspot", "L")) or b"")[:1] == eventlog.FOLDED
    live = store.apply_batch([events[151]], Decider(FOLDING, events[151].occurred_ms + 3_600_000))
    assert live.paths == {"checkpoint": 1}


def test_a_merge_keeps_the_survivors_fold_and_the_merged_records_emails() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, KEY)
    feed(store, touches(120, "S"))
    other = Event("o", EventType.LEAD_PROFILE, Crm.HUBSPOT, "M", at(170), {"email": "m@example.com"})
    store.apply_batch([other], Decider(FOLDING, at(170)))
    survivor = store.log("hubspot", "S")
    assert survivor is not None and survivor.fold is not None
    update = store.merge("hubspot", "S", ["M"], Decider(FOLDING, at(181), suppression_key=KEY))
    assert update is not None
    merged = store.log("hubspot", "S")
    assert merged is not None and merged.fold is not None
    assert merged.fold.events >= survivor.fold.events
    assert "m@example.com" in merged.emails()
    assert merged.counters().outbound_touches == survivor.counters().outbound_touches
    assert conn.get(state_key("hubspot", "M")) is None
    assert conn.zscore(DUE_KEY, "hubspot:M") is None


def test_the_horizon_is_a_policy_setting_of_at_least_a_month() -> None:
    defaults = default_policy()
    assert defaults.retention_horizon_days == 180
    assert parse_policy("retention: {horizon_days: 0}", defaults).retention_horizon_days == 0
    assert parse_policy("retention: {horizon_days: 90}", defaults).retention_horizon_days == 90
    with pytest.raises(PolicyError, match="retention.horizon_days"):
        parse_policy("retention: {horizon_days: 7}", defaults)
    with pytest.raises(PolicyError, match="retention"):
        parse_policy("retention: {days: 90}", defaults)


def test_a_live_lead_folds_without_replaying_what_it_keeps() -> None:
    """The checkpoint carries a live lead on; a fold replays only the events it folds away."""
    store = LeadStore(fakeredis.FakeRedis())
    paths: dict[str, int] = {}
    folded = 0
    for event in touches(300):
        result = store.apply_batch([event], Decider(FOLDING, event.occurred_ms + 3_600_000))
        for path, n in result.paths.items():
            paths[path] = paths.get(path, 0) + n
        folded += result.retention["folded"]
    assert folded > 200
    assert paths == {"new": 1, "checkpoint": 299}


# --- found by a second reader: what a fold must not lose --------------------------------


def feed_keyed(store: LeadStore, events: list[Event], policy: Any = FOLDING) -> None:
    for e in events:
        store.apply_batch([e], Decider(policy, e.occurred_ms + 3_600_000, suppression_key=KEY))


def test_a_merge_into_a_survivor_without_a_fold_keeps_the_merged_records_folded_emails() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, KEY)
    feed_keyed(store, [Event("mp", EventType.LEAD_PROFILE, Crm.HUBSPOT, "M", at(0), {"email": "m@example.com"})])
    feed_keyed(store, touches(120, "M")[1:])
    merged = store.log("hubspot", "M")
    assert merged is not None and merged.fold is not None and merged.fold.emails == ["m@example.com"]
    feed_keyed(store, [Event("s1", EventType.EMAIL_SENT, Crm.HUBSPOT, "S", at(178), {})])
    store.merge("hubspot", "S", ["M"], Decider(FOLDING, at(181), suppression_key=KEY))
    survivor = store.log("hubspot", "S")
    assert survivor is not None and "m@example.com" in survivor.emails()
    erase = Event("x", EventType.ERASURE_REQUESTED, Crm.HUBSPOT, "S", at(182), {})
    store.apply_batch([erase], Decider(FOLDING, at(182) + 1, suppression_key=KEY))
    assert conn.sismember(SUPPRESSED_KEY, email_hash(KEY, "m@example.com"))


@pytest.mark.parametrize("policy", [KEEPING, FOLDING], ids=["keeping", "folding"])
@pytest.mark.parametrize("where", ["before the survivor's fold", "in the merged record's fold"])
def test_a_merge_keeps_the_merged_records_objection(policy: Any, where: str) -> None:
    store = LeadStore(fakeredis.FakeRedis(), KEY)
    dnc = Event("m-dnc", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "M", at(0), {"channels": ["all"]})
    feed_keyed(store, [dnc], policy)
    if where == "before the survivor's fold":
        feed_keyed(store, touches(125, "S"), policy)
    else:  # the merged record lived on and folded its objection; the survivor is young
        replies = [e._replace(lead_id="M", id="m" + e.id) for e in touches(125) if e.type is EventType.EMAIL_REPLIED]
        feed_keyed(store, replies, policy)
        feed_keyed(store, [Event("s1", EventType.EMAIL_SENT, Crm.HUBSPOT, "S", at(185), {})], policy)
    store.merge("hubspot", "S", ["M"], Decider(policy, at(190), suppression_key=KEY))
    assert (store.state("hubspot", "S") or {}).get("state") == "SUPPRESSED"


@pytest.mark.parametrize("policy", [KEEPING, FOLDING], ids=["keeping", "folding"])
def test_a_wider_suppression_listing_after_the_fold_is_told_to_the_crm(policy: Any) -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, KEY)
    events = [Event("dnc", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "L", at(0), {"channels": ["email"]})]
    events += [e for e in touches(150)[1:] if e.type is not EventType.EMAIL_REPLIED]
    feed_keyed(store, events, policy)
    conn.sadd(SUPPRESSED_KEY, email_hash(KEY, "p@example.com"))  # the person was erased under another record
    t = events[-1].occurred_ms + 2 * 3_600_000
    feed_keyed(store, [Event("prof", EventType.LEAD_PROFILE, Crm.HUBSPOT, "L", t, {"email": "p@example.com"})], policy)
    actions = [actionrecord.decode(a) for a in conn.lrange(ACTIONS_KEY, 0, -1)]
    # The CRM is told email first, then every channel (["all"], or ["all", "email"]: the same opt-outs).
    told = [covered_channels(a["channels"]) for a in actions if a["kind"] == "suppress"]
    assert told == [{"email"}, {"email", "phone"}]


@pytest.mark.parametrize("kind", [EventType.ERASURE_REQUESTED, EventType.DO_NOT_CONTACT])
def test_an_objection_or_erasure_dated_before_the_fold_is_applied_not_ignored(kind: EventType) -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, KEY)
    events = touches(150)
    feed_keyed(store, events)
    whole = store.log("hubspot", "L")
    assert whole is not None and whole.fold is not None
    late = Event("late", kind, Crm.HUBSPOT, "L", whole.fold.at_ms - 1, {})
    result = store.apply_batch([late], Decider(FOLDING, events[-1].occurred_ms + 7_200_000, suppression_key=KEY))
    assert result.retention["past_horizon"] == 0
    if kind is EventType.ERASURE_REQUESTED:
        assert result.erased == [("hubspot", "L")] and conn.get(lead_key("hubspot", "L")) is None
    else:
        assert (store.state("hubspot", "L") or {}).get("state") == "SUPPRESSED"


def test_explain_counts_what_the_replay_counts_after_a_folded_record_gets_a_new_version() -> None:
    store = LeadStore(fakeredis.FakeRedis())
    first = Event("c1", EventType.CALL_ATTEMPTED, Crm.HUBSPOT, "L", at(0) + 1000, versioned("call-1", at(0)))
    events = [first] + [e for e in touches(80) if e.type is EventType.EMAIL_SENT]
    feed(store, events)
    t = events[-1].occurred_ms + 3_600_000
    edited = Event("c1b", EventType.CALL_CONNECTED, Crm.HUBSPOT, "L", t, versioned("call-1", t))
    store.apply_batch([edited], Decider(FOLDING, t + 1))
    ck = store.checkpoint("hubspot", "L")
    assert ck is not None
    whole = store.log("hubspot", "L")
    assert whole is not None
    replayed = decode_running(bytes(ck.running)).counters
    doc = lead_document("hubspot", "L", whole, store.state("hubspot", "L"), ck)
    assert doc["counters"]["connected_calls"] == replayed.connected_calls == 0


def test_a_redelivered_profile_does_not_lose_the_listed_source() -> None:
    """The list index folds the whole log when the checkpoint was continued, log read or not."""
    from worker import leadindex

    store = LeadStore(fakeredis.FakeRedis())
    profile = Event("p", EventType.LEAD_PROFILE, Crm.HUBSPOT, "L", at(0), {"source": "ADS"})
    dnc = Event("n", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "L", at(0) + 1, {"channels": ["email"]})
    deal = Event("d1", EventType.DEAL_UPDATED, Crm.HUBSPOT, "L", at(1), {"deal_id": "d", "stage": "qualifiedtobuy"})
    for e in (profile, dnc, deal):
        store.apply_batch([e], Decider(KEEPING, e.occurred_ms + 60_000))
    again = Event("d2", EventType.DEAL_UPDATED, Crm.HUBSPOT, "L", at(2), {"deal_id": "d", "stage": "presentation"})
    store.apply_batch([profile, again], Decider(KEEPING, at(2) + 60_000))  # the profile redelivered
    [entry] = leadindex.read(store.redis, [("hubspot", "L")])
    assert entry is not None and entry.source == "ADS"
