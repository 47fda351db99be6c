"""A batch's log appends (worker/transaction.py `Writes`), on the real Redis: what they cost in memory.

Redis grows an APPENDed string to twice its new length and keeps the slack; the append script
puts a copy at its size in the log's place, whatever the log's length, and keeps every record.
"""

from __future__ import annotations

import redis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker import eventlog
from worker.keys import SCRATCH_KEY, lead_key
from worker.store import LeadStore
from worker.transaction import Writes


def events(lead: str, first: int, count: int) -> list[Event]:
    return [
        Event(f"e{lead}-{n}", EventType.EMAIL_SENT, Crm.HUBSPOT, lead, at(n // 24, hours=n % 24), {})
        for n in range(first, first + count)
    ]


def at_its_size(conn: redis.Redis, key: str) -> bool:
    """The value in jemalloc's next size class (2,560 B for 2.3 KB, 40 KB for 33 KB), plus the key."""
    return int(conn.memory_usage(key, samples=0) or 0) < int(conn.strlen(key)) * 1.25 + 100


def test_a_small_log_grown_one_event_at_a_time_holds_no_slack(conn: redis.Redis) -> None:
    store = LeadStore(conn)
    key = lead_key("hubspot", "A")
    for n in range(120):  # ~1.5 KB: appended to, it would sit in an allocation up to twice that
        store.apply_batch(events("A", n, 1))
        assert at_its_size(conn, key), n
    assert len(eventlog.decode(conn.get(key))) == 120


def test_a_large_log_grown_one_event_at_a_time_holds_no_slack_and_keeps_every_record(conn: redis.Redis) -> None:
    # Until 2026-12-06 a log past 8 KB was APPENDed to as it was, slack and all.
    store = LeadStore(conn)
    store.apply_batch(events("B", 0, 2_700))  # ~33 KB
    key = lead_key("hubspot", "B")
    for n in range(2_700, 2_760):
        store.apply_batch(events("B", n, 1) + events("C", n, 1))
        assert at_its_size(conn, key), n
    keys = {ev.key for ev in eventlog.decode(conn.get(key))}
    assert keys == {eventlog.event_key("hubspot", f"eB-{n}") for n in range(2_760)}
    assert len(eventlog.decode(conn.get(lead_key("hubspot", "C")))) == 60
    assert not conn.exists(SCRATCH_KEY)


def test_the_script_appends_to_absent_small_and_large_logs_alike(conn: redis.Redis) -> None:
    big = b"x" * 100_000
    conn.set("log:small", b"ab")
    conn.set("log:big", big)
    conn.set(SCRATCH_KEY, b"left over by nothing we know of")  # overwritten, then moved: gone
    writes = Writes()
    for key, value in (("log:small", b"cd"), ("log:big", b"yz"), ("log:new", b"ef")):
        writes.append(key, value)
    with conn.pipeline() as pipe:
        writes.flush(pipe)
        pipe.execute()
    assert conn.mget("log:small", "log:big", "log:new") == [b"abcd", big + b"yz", b"ef"]
    assert all(at_its_size(conn, key) for key in ("log:small", "log:big", "log:new"))
    assert not conn.exists(SCRATCH_KEY)
