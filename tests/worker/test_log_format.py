"""Logs and checkpoints written in the record format of before 2026-12-05 keep working (worker/eventlog.py).

A store upgraded in place holds logs of versions 1 and 2 (19-byte records) and checkpoints of
format 1 (their tail in those records). They are read as they are and appended to in their own
records, so a store where they linger decides exactly what a store written wholly in the
current format decides, batch after batch.
"""

from __future__ import annotations

import random

import fakeredis
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.worker.test_checkpoint import P, build, deliveries, dump, event_st
from worker import checkpoint, compression, eventlog
from worker.decide import Decider
from worker.keys import CHECKPOINT_PREFIX
from worker.keys import PREFIX as LEAD_PREFIX
from worker.store import LeadStore


def to_old_format(conn: fakeredis.FakeRedis, rng: random.Random | None = None) -> int:
    """Rewrite the store's logs and checkpoints (with `rng`: ~70 % of them) as the previous version wrote them."""
    changed = 0
    for key in conn.keys(LEAD_PREFIX + "*"):
        blob = conn.get(key)
        if not blob or not eventlog.is_compact(blob) or (rng is not None and rng.random() < 0.3):
            continue
        whole = eventlog.read(blob)
        records = eventlog.encode(whole.events, compact=False)
        if whole.fold is None:
            old = eventlog.OLD_VERSION + records
        else:
            packed = compression.pack(eventlog.fold_bytes(whole.fold))
            old = eventlog.OLD_FOLDED + len(packed).to_bytes(4, "little") + packed + records
        conn.set(key, old)
        changed += 1
    for key in conn.keys(CHECKPOINT_PREFIX + "*"):
        stored = checkpoint.unpack(conn.get(key))
        if stored is None or stored.format == 1 or (rng is not None and rng.random() < 0.3):
            continue
        tail = eventlog.encode(stored.events_after(), compact=False)
        old_ck = msgspec.structs.replace(stored, format=1, tail=tail)
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


def test_an_old_log_is_appended_to_in_its_own_records_and_moves_on_at_its_next_rewrite() -> None:
    from tests.worker.test_checkpoint import history_of

    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = history_of(30)
    store.apply_batch(events[:20], Decider(P, events[19].occurred_ms))
    assert to_old_format(conn) == 2
    key = f"{LEAD_PREFIX}hubspot:L"
    assert conn.get(key)[:1] == eventlog.OLD_VERSION
    assert checkpoint.unpack(conn.get(f"{CHECKPOINT_PREFIX}hubspot:L")).format == 1
    live = store.apply_batch(events[20:25], Decider(P, events[24].occurred_ms))
    assert live.paths == {"checkpoint": 1} and live.added == 5
    late = store.apply_batch([events[3], events[25]], Decider(P, events[25].occurred_ms))
    assert (late.duplicates, late.added) == (1, 1)
    blob = conn.get(key)
    assert blob[:1] == eventlog.OLD_VERSION
    assert [e.key for e in sorted(eventlog.decode(blob))] == [eventlog.to_logged(e).key for e in events[:26]]
    # The checkpoint is rewritten in the current format at once (it is written with each batch).
    assert checkpoint.unpack(conn.get(f"{CHECKPOINT_PREFIX}hubspot:L")).format == checkpoint.FORMAT


def test_type_codes_leave_the_record_flags_free() -> None:
    from rules.events import TYPE_CODES

    assert max(TYPE_CODES.values()) < 0x40  # eventlog: 0x80 data follows, 0x40 a wide time


def test_times_past_48_bits_are_kept_in_full() -> None:
    from rules.counters import LoggedEvent
    from rules.events import EventType

    times = [-(2**47) - 1, -(2**47), 0, 2**47 - 1, 2**47, 253_402_214_400_000, 2**63 - 1]
    logged = [
        LoggedEvent(t, EventType.MEETING_BOOKED, n.to_bytes(8, "little"), {"meeting_id": "9"} if n % 2 else {})
        for n, t in enumerate(times)
    ]
    blob = eventlog.append(None, logged)
    assert eventlog.decode(blob) == logged
    assert eventlog.keys(blob) == {e.key for e in logged}
