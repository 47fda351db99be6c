"""Jobs a dying worker had taken from the queue but not started go back on it (worker/reaper.py)."""

from __future__ import annotations

import fakeredis

from rules.events import Crm, Event, EventType
from worker.queues import enqueue_events, make_queue
from worker.reaper import STUCK_PREFIX, rescue


def one_job(conn: fakeredis.FakeRedis) -> str:
    event = Event("e1", EventType.EMAIL_SENT, Crm.HUBSPOT, "lead-1", 1_700_000_000_000, {})
    return enqueue_events(make_queue(conn), [event.to_wire()], source="events")


def test_a_job_taken_but_never_started_is_requeued_on_the_second_sighting() -> None:
    conn = fakeredis.FakeRedis()
    queue = make_queue(conn)
    job_id = one_job(conn)
    # What RQ's dequeue does first (BLMOVE); the worker then died before recording the start.
    conn.lmove(queue.key, queue.intermediate_queue.key)
    assert queue.count == 0 and queue.intermediate_queue.get_job_ids() == [job_id]
    assert rescue(conn, queue, now=1000.0) == []  # first sighting: a live worker may be mid-step
    assert rescue(conn, queue, now=1002.0) == []  # still too young to call stuck
    assert rescue(conn, queue, now=1006.0) == [job_id]
    assert queue.get_job_ids() == [job_id] and queue.intermediate_queue.get_job_ids() == []
    assert conn.get(f"{STUCK_PREFIX}{job_id}") is None
    assert rescue(conn, queue, now=1030.0) == []  # nothing left to do


def test_a_started_job_is_left_to_its_worker() -> None:
    conn = fakeredis.FakeRedis()
    queue = make_queue(conn)
    job_id = one_job(conn)
    conn.lmove(queue.key, queue.intermediate_queue.key)
    conn.zadd(queue.started_job_registry.key, {f"{job_id}:exec-1": 2_000_000_000})
    assert rescue(conn, queue, now=1000.0) == [] and rescue(conn, queue, now=1100.0) == []
    assert queue.intermediate_queue.get_job_ids() == [job_id] and queue.count == 0


def test_an_id_whose_job_is_gone_is_dropped_from_the_list() -> None:
    conn = fakeredis.FakeRedis()
    queue = make_queue(conn)
    conn.rpush(queue.intermediate_queue.key, "no-such-job")
    rescue(conn, queue, now=1000.0)
    assert rescue(conn, queue, now=1010.0) == []
    assert queue.intermediate_queue.get_job_ids() == [] and queue.count == 0
