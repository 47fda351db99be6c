"""What a live batch writes for a lead with a history (issue #13): only what changed.

A batch that decides nothing new leaves the lead's state record byte for byte as it was
(its due time moves in the checkpoint and the due set), so the store neither re-encodes nor
rewrites it; what a later `now` decided is still never undone by an earlier one; records
and checkpoints written before keep working.
"""

from __future__ import annotations

import json
import struct

import fakeredis
import msgspec

from rules.events import TYPE_CODES, Crm, Event, EventType, format_ms
from tests.rules_helpers import at
from worker import compression, eventlog
from worker.checkpoint import UNKNOWN, unpack
from worker.decide import Decider
from worker.keys import DUE_KEY, checkpoint_key, due_member, lead_key, state_key
from worker.leaddoc import lead_document
from worker.policyfile import default_policy
from worker.store import LeadStore
from worker.transaction import Writes

P = default_policy()
HOUR = 3_600_000


def ev(n: int, kind: str, lead: str, when: int, **data: object) -> Event:
    return Event(f"e{n}-{lead}", EventType(kind), Crm.HUBSPOT, lead, when, dict(data))


def unanswered(lead: str, days: int = 15) -> list[Event]:
    """An email a day, never answered: BREAKUP_DUE after 13 touches, its grace running."""
    return [ev(day, "email_sent", lead, at(day)) for day in range(days)]


def doc(store: LeadStore, lead: str) -> dict[str, object]:
    whole = store.log("hubspot", lead)
    assert whole is not None
    return lead_document("hubspot", lead, whole, store.state("hubspot", lead), store.checkpoint("hubspot", lead))


def test_a_live_batch_that_decides_nothing_leaves_the_state_record_as_it_was() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch([e for lead in ("A", "B") for e in unanswered(lead)], Decider(P, at(15)))
    before = {lead: conn.get(state_key("hubspot", lead)) for lead in ("A", "B")}
    assert [json.loads(compression.unpack(v or b"{}")).get("state") for v in before.values()] == ["BREAKUP_DUE"] * 2
    assert "next_due" not in json.loads(compression.unpack(before["A"] or b"{}"))

    touch = [ev(200, "call_attempted", lead, at(15, hours=2)) for lead in ("A", "B")]
    result = store.apply_batch(touch, Decider(P, at(16)))

    assert result.paths == {"checkpoint": 2}
    assert all(u.outcome is not None and u.outcome.unchanged for u in result.leads)
    assert {lead: conn.get(state_key("hubspot", lead)) for lead in ("A", "B")} == before
    # The due time is the checkpoint's, as the due set has it.
    due = conn.zscore(DUE_KEY, due_member("hubspot", "A"))
    assert due is not None and doc(store, "A")["next_due"] == format_ms(int(due))
    # Both logs got their event (one APPEND script for the batch).
    assert eventlog.read(conn.get(lead_key("hubspot", "B"))).events[-1].key == eventlog.event_key("hubspot", "e200-B")


def test_a_decision_rewrites_the_state_record() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(unanswered("A"), Decider(P, at(15)))
    before = conn.get(state_key("hubspot", "A"))
    result = store.apply_batch(
        [ev(300 + i, "not_interested", "A", at(15, hours=i + 1)) for i in range(2)], Decider(P, at(16))
    )
    assert result.paths == {"checkpoint": 1}
    assert result.leads[0].outcome is not None and not result.leads[0].outcome.unchanged
    after = json.loads(compression.unpack(conn.get(state_key("hubspot", "A")) or b"{}"))
    assert conn.get(state_key("hubspot", "A")) != before and after["state"] == "LOST"
    assert after["as_of_ms"] == at(16)


def test_what_a_later_now_decided_is_not_undone_by_an_earlier_one() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    # No reply: a break-up is due, and its grace runs out a week or so later.
    store.apply_batch(unanswered("A"), Decider(P, at(15)))
    assert (store.state("hubspot", "A") or {})["state"] == "BREAKUP_DUE"
    store.reevaluate([("hubspot", "A")], Decider(P, at(40)))  # a sweep run ahead of the clock
    assert (store.state("hubspot", "A") or {})["state"] == "LOST"
    # A batch processed at an earlier `now` afterwards: the lead stays lost.
    store.apply_batch([ev(500, "call_attempted", "A", at(16))], Decider(P, at(17)))
    record = store.state("hubspot", "A") or {}
    assert record["state"] == "LOST" and record["as_of_ms"] == at(40)


def test_records_written_before_keep_their_due_time_until_rewritten() -> None:
    """A state record with `next_due` and a checkpoint without `due` (the previous version's)."""
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(unanswered("A"), Decider(P, at(15)))
    record = json.loads(compression.unpack(conn.get(state_key("hubspot", "A")) or b"{}"))
    due = int(conn.zscore(DUE_KEY, due_member("hubspot", "A")) or 0)
    record["next_due"] = format_ms(due)
    conn.set(state_key("hubspot", "A"), json.dumps(record, separators=(",", ":")))
    fields = msgspec.msgpack.decode(compression.unpack(conn.get(checkpoint_key("hubspot", "A")) or b""))
    conn.set(checkpoint_key("hubspot", "A"), msgspec.msgpack.encode(fields[:8]))  # no `due`
    assert (unpack(conn.get(checkpoint_key("hubspot", "A"))) or fields).due == UNKNOWN  # type: ignore[union-attr]
    assert doc(store, "A")["next_due"] == format_ms(due)

    result = store.apply_batch([ev(200, "call_attempted", "A", at(15, hours=2))], Decider(P, at(16)))
    assert result.paths == {"checkpoint": 1}
    rewritten = json.loads(compression.unpack(conn.get(state_key("hubspot", "A")) or b"{}"))
    assert "next_due" not in rewritten and rewritten["as_of_ms"] == at(16)
    assert doc(store, "A")["next_due"] == format_ms(due)  # now from the checkpoint


def test_writes_append_to_each_key_in_one_script() -> None:
    conn = fakeredis.FakeRedis()
    conn.set("k1", b"a")
    for keys in (["k1"], ["k1", "k2", "k3"]):
        writes = Writes()
        for key in keys:
            writes.append(key, b"x")
            writes.append(key, b"y")
        pipe = conn.pipeline()
        writes.flush(pipe)
        pipe.execute()
    assert [conn.get(k) for k in ("k1", "k2", "k3")] == [b"axyxy", b"xy", b"xy"]


def test_log_records_read_back_their_data_whatever_wrote_it() -> None:
    """msgspec reads the records json.dumps wrote; what it refuses (NaN) is read as before."""
    logged = eventlog.to_logged(ev(1, "time_logged", "A", at(1), minutes=15, note="café"))
    nan = json.dumps({"minutes": float("nan")}).encode()
    code, t = TYPE_CODES[EventType.TIME_LOGGED], at(2)
    # The records of 2026-12-05 (15 bytes), JSON data.
    odd = struct.pack("<8sIhBH", b"k" * 8, t & 0xFFFFFFFF, t >> 32, code | 0x80, len(nan)) + nan
    back = eventlog.decode_records(eventlog.encode([logged], eventlog.RECORDS_15) + odd, 0, eventlog.RECORDS_15)
    assert back[0].data == {"minutes": 15, "note": "café"}
    assert back[1].data["minutes"] != back[1].data["minutes"]  # NaN
    # The same in the records of before 2026-12-05.
    odd = struct.pack("<8sqBH", b"k" * 8, t, code, len(nan)) + nan
    back = eventlog.decode_records(eventlog.encode([logged], eventlog.RECORDS_19) + odd, 0, eventlog.RECORDS_19)
    assert back[0].data == {"minutes": 15, "note": "café"}
    assert back[1].data["minutes"] != back[1].data["minutes"]
    # The current records: msgpack, and NaN as msgpack keeps it; data msgpack cannot hold as
    # JSON does (an object) goes as JSON.
    nested = eventlog.to_logged(ev(3, "time_logged", "A", at(3), minutes=float("nan"), extra={"a": [1, 2]}))
    back = eventlog.decode_records(eventlog.encode([logged, nested]))
    assert back[0].data == {"minutes": 15, "note": "café"}
    assert back[1].data["minutes"] != back[1].data["minutes"]
    assert back[1].data["extra"] == {"a": [1, 2]}
