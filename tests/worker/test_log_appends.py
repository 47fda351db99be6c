"""A batch's log appends (worker/transaction.py `Writes`), on the real Redis: what they cost in memory.

Redis grows an APPENDed string to twice its new length and keeps the slack; a small log is
rewritten at its size instead, and a large one appended to. Both keep every record.
"""

from __future__ import annotations

import redis

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker import eventlog
from worker.keys import lead_key
from worker.store import LeadStore
from worker.transaction import APPEND_COPY_LIMIT, Writes


def events(lead: str, first: int, count: int) -> list[Event]:
    return [
        Event(f"e{lead}-{n}", EventType.EMAIL_SENT, Crm.HUBSPOT, lead, at(n // 24, hours=n % 24), {})
        for n in range(first, first + count)
    ]


def test_a_small_log_grown_one_event_at_a_time_holds_no_slack(conn: redis.Redis) -> None:
    store = LeadStore(conn)
    for n in range(120):  # ~2.3 KB: appended to, it would sit in a 4 KB+ allocation
        store.apply_batch(events("A", n, 1))
    key = lead_key("hubspot", "A")
    size = int(conn.strlen(key))
    assert size < APPEND_COPY_LIMIT
    # The value at its size, in jemalloc's next size class (2,560 for 2.3 KB), plus the key.
    assert int(conn.memory_usage(key, samples=0) or 0) < size * 1.25 + 100
    assert len(eventlog.decode(conn.get(key))) == 120


def test_appends_to_a_log_past_the_limit_keep_every_record(conn: redis.Redis) -> None:
    store = LeadStore(conn)
    store.apply_batch(events("B", 0, 700))  # ~8.4 KB, past the limit: appended to from now on
    key = lead_key("hubspot", "B")
    assert int(conn.strlen(key)) >= APPEND_COPY_LIMIT
    for n in range(700, 720):
        store.apply_batch(events("B", n, 1) + events("C", n, 1))
    keys = {ev.key for ev in eventlog.decode(conn.get(key))}
    assert keys == {eventlog.event_key("hubspot", f"eB-{n}") for n in range(720)}
    assert len(eventlog.decode(conn.get(lead_key("hubspot", "C")))) == 20


def test_the_script_appends_to_absent_small_and_large_logs_alike(conn: redis.Redis) -> None:
    big = b"x" * APPEND_COPY_LIMIT
    conn.set("log:small", b"ab")
    conn.set("log:big", big)
    writes = Writes()
    for key, value in (("log:small", b"cd"), ("log:big", b"yz"), ("log:new", b"ef")):
        writes.append(key, value)
    with conn.pipeline() as pipe:
        writes.flush(pipe)
        pipe.execute()
    assert conn.mget("log:small", "log:big", "log:new") == [b"abcd", big + b"yz", b"ef"]


def test_a_copy_limit_of_zero_appends_as_before(conn: redis.Redis) -> None:
    from worker.config import Config

    assert Config.from_env({"PRUNER_LOG_COPY_LIMIT": "0"}).log_copy_limit == 0
    assert Config.from_env({}).log_copy_limit == APPEND_COPY_LIMIT
    store = LeadStore(conn, log_copy_limit=0)  # AOF and replicas get the appended bytes only
    key = lead_key("hubspot", "Z")
    worst = 0.0
    for n in range(120):
        store.apply_batch(events("Z", n, 1))
        # APPEND's slack depends on where the last growth fell: the worst of the run shows it.
        worst = max(worst, int(conn.memory_usage(key, samples=0) or 0) / (int(conn.strlen(key)) * 1.25 + 100))
    assert worst > 1
    assert len(eventlog.decode(conn.get(key))) == 120
