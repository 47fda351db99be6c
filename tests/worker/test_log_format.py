"""Logs and checkpoints written in earlier record formats keep working (worker/eventlog.py).

A store upgraded in place holds logs of versions 1 and 2 (19-byte records, before 2026-12-05)
and 3 and 4 (15-byte records, 2026-12-05), and checkpoints of formats 1 and 2 (their tails in
those records). They are read as they are and appended to in their own records, so a store
where they linger decides exactly what a store written wholly in the current format decides,
batch after batch.
"""

from __future__ import annotations

import random

import fakeredis
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.worker.test_checkpoint import P, build, deliveries, dump, event_st
from worker import checkpoint, compression, eventlog
from worker.decide import Decider
from worker.keys import CHECKPOINT_PREFIX
from worker.keys import PREFIX as LEAD_PREFIX
from worker.store import LeadStore

# An earlier record format: its unfolded log version (the folded one is one more), its checkpoint format.
EARLIER = {eventlog.RECORDS_19: 1, eventlog.RECORDS_15: 2}


def earlier_log(whole: eventlog.Log, records: int) -> bytes:
    """A log as the version that wrote `records` wrote it."""
    packed = eventlog.encode(whole.events, records)
    if whole.fold is None:
        return bytes([records]) + packed
    fold = compression.pack(eventlog.fold_bytes(whole.fold))
    return bytes([records + 1]) + len(fold).to_bytes(4, "little") + fold + packed


def to_old_format(conn: fakeredis.FakeRedis, rng: random.Random | None = None, records: int | None = None) -> int:
    """Rewrite the store's logs and checkpoints in the current format (with `rng`: ~70 % of them) as
    an earlier version wrote them: `records`, or one of the two at random."""
    changed = 0
    pick = rng or random.Random(0)
    for key in conn.keys(LEAD_PREFIX + "*"):
        blob = conn.get(key)
        if not blob or eventlog.record_format(blob) != eventlog.RECORDS_12 or (rng is not None and rng.random() < 0.3):
            continue
        conn.set(key, earlier_log(eventlog.read(blob), records or pick.choice(list(EARLIER))))
        changed += 1
    for key in conn.keys(CHECKPOINT_PREFIX + "*"):
        stored = checkpoint.unpack(conn.get(key))
        if stored is None or stored.format != checkpoint.FORMAT or (rng is not None and rng.random() < 0.3):
            continue
        chosen = records or pick.choice(list(EARLIER))
        tail = eventlog.encode(stored.events_after(), chosen)
        old_ck = msgspec.structs.replace(stored, format=EARLIER[chosen], tail=tail)
        conn.set(key, compression.pack(msgspec.msgpack.encode(old_ck)))
        changed += 1
    return changed


def logs(conn: fakeredis.FakeRedis) -> dict[bytes, tuple[object, list[object]]]:
    """Each lead's log, decoded: its fold and its events (in any order: appends do not sort)."""
    out = {}
    for key in conn.keys(LEAD_PREFIX + "*"):
        whole = eventlog.read(conn.get(key))
        out[key] = (whole.fold, sorted(whole.events, key=lambda e: (e.occurred_ms, e.key)))
    return out


def without_logs(conn: fakeredis.FakeRedis) -> dict[str, object]:
    return {k: v for k, v in dump(conn).items() if not k.startswith(LEAD_PREFIX)}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(event_st, min_size=6, max_size=50), seed=st.integers(0, 10**6), task=st.booleans())
def test_a_store_holding_logs_of_the_previous_format_decides_the_same(
    raw: list[tuple[int, int, str]], seed: int, task: bool
) -> None:
    events = build(raw)
    rng = random.Random(seed)
    upgraded, current = fakeredis.FakeRedis(), fakeredis.FakeRedis()
    upgraded_store, current_store = LeadStore(upgraded), LeadStore(current)
    for batch, now in deliveries(events, seed):
        to_old_format(upgraded, rng)
        upgraded_store.apply_batch(batch, Decider(P, now, grace_from_task=task))
        current_store.apply_batch(batch, Decider(P, now, grace_from_task=task))
        assert without_logs(upgraded) == without_logs(current)
        assert logs(upgraded) == logs(current)


@pytest.mark.parametrize("records", list(EARLIER))
def test_an_old_log_is_appended_to_in_its_own_records_and_moves_on_at_its_next_rewrite(records: int) -> None:
    from tests.worker.test_checkpoint import history_of

    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = history_of(30)
    store.apply_batch(events[:20], Decider(P, events[19].occurred_ms))
    assert to_old_format(conn, records=records) == 2
    key = f"{LEAD_PREFIX}hubspot:L"
    assert conn.get(key)[0] == records
    assert checkpoint.unpack(conn.get(f"{CHECKPOINT_PREFIX}hubspot:L")).format == EARLIER[records]
    live = store.apply_batch(events[20:25], Decider(P, events[24].occurred_ms))
    assert live.paths == {"checkpoint": 1} and live.added == 5
    # A redelivery the probe finds by the first 6 bytes of an 8-byte key, late or live.
    again = store.apply_batch([events[21]], Decider(P, events[24].occurred_ms))
    assert (again.duplicates, again.added) == (1, 0)
    late = store.apply_batch([events[3], events[25]], Decider(P, events[25].occurred_ms))
    assert (late.duplicates, late.added) == (1, 1)
    blob = conn.get(key)
    assert blob[0] == records
    assert [e.key for e in sorted(eventlog.decode(blob))] == [eventlog.to_logged(e).key for e in events[:26]]
    # The checkpoint is rewritten in the current format at once (it is written with each batch).
    assert checkpoint.unpack(conn.get(f"{CHECKPOINT_PREFIX}hubspot:L")).format == checkpoint.FORMAT
    # Written whole (a fold, a merge), the log moves to the current records.
    assert eventlog.write(eventlog.read(blob))[:1] == eventlog.VERSION


def test_type_codes_leave_the_record_flags_free() -> None:
    from rules.events import TYPE_CODES

    assert max(TYPE_CODES.values()) < 0x40  # eventlog: 0x80 data follows, 0x40 a wide time


@pytest.mark.parametrize("records", [eventlog.RECORDS_12, eventlog.RECORDS_15])
def test_times_past_the_records_bits_are_kept_in_full(records: int) -> None:
    from rules.counters import LoggedEvent
    from rules.events import EventType

    edge = eventlog.EPOCH_MS + 2**39  # the current records: 40 signed bits from 2030
    times = [-(2**47) - 1, -(2**47), 0, 2**47 - 1, 2**47, 253_402_214_400_000, 2**63 - 1]
    times += [edge - 1, edge, eventlog.EPOCH_MS - 2**39, eventlog.EPOCH_MS - 2**39 - 1, eventlog.EPOCH_MS]
    logged = [
        LoggedEvent(t, EventType.MEETING_BOOKED, n.to_bytes(6, "little"), {"meeting_id": "9"} if n % 2 else {})
        for n, t in enumerate(times)
    ]
    blob = bytes([records]) + eventlog.encode(logged, records)
    assert eventlog.decode(blob) == logged
    assert eventlog.keys(blob) == {e.key for e in logged}


def test_data_field_names_are_coded_for_every_canonical_field_and_only_ever_appended() -> None:
    from rules.events import DATA_FIELDS, RECORD_KEY, VERSION_KEY

    named = {name for fields in DATA_FIELDS.values() for name in fields} | {RECORD_KEY, VERSION_KEY}
    assert named <= set(eventlog.DATA_NAMES)
    # The codes already written to stores: a name may be added at the end, never moved.
    assert eventlog.DATA_NAMES[:20] == (
        "follow_up", "hard", "meeting_id", "first_meeting", "reason", "expires_at", "minutes", "deal_id",
        "amount", "stage", "won", "source", "segment", "priority", "email", "converted", "channels",
        "decision_at", "~r", "~v",
    )  # fmt: skip


# Text with lone surrogates too: a webhook's JSON may carry a "\ud800" escape, which UTF-8 cannot hold.
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@example(data={"reason": "a\ud800b", "note": ["\udfff"]})
@given(data=st.dictionaries(st.sampled_from([*eventlog.DATA_NAMES, "other", "é"]) | st.text(max_size=6), json_value))
def test_data_reads_back_as_its_json_would(data: dict[str, object]) -> None:
    import json

    expected = json.loads(json.dumps(data, sort_keys=True))
    back = eventlog.unpack_data(eventlog.pack_data(data))
    # (NaN is not equal to itself: compare the JSON of both)
    assert json.dumps(back) == json.dumps(expected)
    assert list(back) == list(expected)
    # Both record formats read it back the same
    from rules.counters import LoggedEvent
    from rules.events import EventType

    logged = [LoggedEvent(eventlog.EPOCH_MS, EventType.TIME_LOGGED, b"123456", data)]
    for records in (eventlog.RECORDS_12, eventlog.RECORDS_15):
        again = eventlog.decode_records(eventlog.encode(logged, records), 0, records)[0].data
        assert json.dumps(again) == json.dumps(expected) and type(again) is dict
