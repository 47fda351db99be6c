"""A worker told to stop (SIGTERM, as a platform does on deploy) finishes its batch; a killed one loses nothing."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from rules.events import Crm, Event, EventType
from tests.integration.support import BIN, ROOT, base_env, free_port, redis_answers, start_worker, stop, wait_until
from worker.keys import PREFIX
from worker.queues import enqueue_events, make_queue
from worker.store import LeadStore

pytestmark = pytest.mark.integration


def signal_mid_batch(queue: Queue, prefix: str, batches: int, signum: int) -> int:
    """Queue `batches` batches of 1,000 one-event leads, start a worker, signal it once it is busy.

    Returns the worker's exit code.
    """
    at = int((datetime.now(tz=UTC) - timedelta(days=1)).timestamp() * 1000)
    for b in range(batches):
        batch = [
            Event(f"{prefix}-{b}-{i}", EventType.EMAIL_SENT, Crm.HUBSPOT, f"{prefix}-{b}-{i}", at, {}).to_wire()
            for i in range(1000)
        ]
        enqueue_events(queue, batch, source="events")
    worker = start_worker()
    try:
        wait_until(lambda: queue.started_job_registry.count >= 1, seconds=20)
        worker.send_signal(signum)
        return worker.wait(timeout=30)
    finally:
        stop(worker)


def test_sigterm_mid_batch_finishes_the_batch(redis_db: redis.Redis) -> None:
    queue = make_queue(redis_db)
    assert signal_mid_batch(queue, "sd", 6, signal.SIGTERM) == 0
    done = sum(1 for _ in redis_db.scan_iter(f"{PREFIX}hubspot:sd-*", count=1000))
    # Whatever was started was finished: whole batches only, and the rest still queued.
    assert done % 1000 == 0 and done >= 1000
    assert queue.count == 6 - done // 1000
    assert queue.started_job_registry.count == 0 and queue.failed_job_registry.count == 0
    # A new worker (the next dyno) takes the rest.
    worker = start_worker()
    try:
        wait_until(lambda: sum(1 for _ in redis_db.scan_iter(f"{PREFIX}hubspot:sd-*", count=1000)) == 6000, 60)
    finally:
        stop(worker)


def test_sigkill_mid_batch_loses_nothing_and_counts_once(redis_db: redis.Redis) -> None:
    # The OOM killer or a crashed dyno: no warm shutdown, the batch stops half-applied.
    queue = make_queue(redis_db)
    assert signal_mid_batch(queue, "kd", 4, signal.SIGKILL) == -signal.SIGKILL
    [job_id] = queue.started_job_registry.get_job_ids()  # abandoned mid-batch
    # A batch is applied in one MULTI/EXEC, so a kill leaves it applied whole or not at all.
    # Take the harder case, the worker dying just after its write reached Redis: the retry
    # must then count nothing twice.
    abandoned = Job.fetch(job_id, connection=redis_db, serializer=queue.serializer)
    LeadStore(redis_db).apply_batch(Event.from_wire(w) for w in abandoned.args[0])
    # What a live worker's registry maintenance does once the abandoned entry has expired
    # (job timeout + 60 s, then within MAINTENANCE_SECONDS): retry the job.
    queue.started_job_registry.cleanup(timestamp=time.time() + 3600)
    assert queue.failed_job_registry.count == 0
    worker = start_worker()
    try:
        wait_until(lambda: sum(1 for _ in redis_db.scan_iter(f"{PREFIX}hubspot:kd-*", count=1000)) == 4000, 60)
        wait_until(lambda: queue.count == 0 and queue.started_job_registry.count == 0, 30)
    finally:
        stop(worker)
    # Every event counted exactly once, the half-applied batch included.
    store = LeadStore(redis_db)
    for b in range(4):
        for i in (0, 499, 999):
            assert len(store.history("hubspot", f"kd-{b}-{i}") or []) == 1
    assert queue.failed_job_registry.count == 0


def test_a_batch_abandoned_by_a_killed_worker_is_applied_within_a_minute(redis_db: redis.Redis) -> None:
    # No hand-run cleanup this time: the clock's watchdog must notice the dead worker by itself.
    queue = make_queue(redis_db)
    clock = subprocess.Popen([str(BIN / "pruner"), "clock"], cwd=ROOT, env=base_env(), stdout=subprocess.DEVNULL)
    try:
        assert signal_mid_batch(queue, "rk", 3, signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        assert queue.started_job_registry.count == 1  # abandoned mid-batch, its events invisible
        worker = start_worker()
        try:
            wait_until(lambda: sum(1 for _ in redis_db.scan_iter(f"{PREFIX}hubspot:rk-*", count=1000)) == 3000, 90)
            recovered = time.monotonic() - killed_at
            wait_until(lambda: queue.count == 0 and queue.started_job_registry.count == 0, 30)
        finally:
            stop(worker)
    finally:
        stop(clock)
    print(f"abandoned batch applied {recovered:.1f} s after its worker was SIGKILLed")
    # Alive key 15 s + a watchdog tick every 15 s + queue latency: about 30 s; RQ alone took 3-6 minutes.
    assert recovered < 60, f"recovered after {recovered:.0f} s"
    assert queue.failed_job_registry.count == 0
    store = LeadStore(redis_db)
    assert all(len(store.history("hubspot", f"rk-{b}-{i}") or []) == 1 for b in range(3) for i in (0, 999))


def test_a_worker_outlives_a_redis_outage(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", "", "--dir", str(tmp_path)]
        proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        wait_until(lambda: redis_answers(url), seconds=10)
        return proc

    def applied(conn: redis.Redis, prefix: str) -> int:
        return sum(1 for _ in conn.scan_iter(f"{PREFIX}hubspot:{prefix}-*", count=1000))

    def batch(prefix: str, n: int = 50) -> list[list[object]]:
        at = int((datetime.now(tz=UTC) - timedelta(days=1)).timestamp() * 1000)
        return [
            Event(f"{prefix}-{i}", EventType.EMAIL_SENT, Crm.HUBSPOT, f"{prefix}-{i}", at, {}).to_wire()
            for i in range(n)
        ]

    server = start_redis()
    worker = start_worker(base_env(REDIS_URL=url))
    try:
        conn = redis.Redis.from_url(url)
        enqueue_events(make_queue(conn), batch("before"), source="events")
        wait_until(lambda: applied(conn, "before") == 50, seconds=30)
        queue = make_queue(conn)
        for b in range(4):  # keep the worker busy, so the outage hits a job's bookkeeping, not a dequeue
            enqueue_events(queue, batch(f"busy{b}", 1000), source="events")
        wait_until(lambda: queue.started_job_registry.count >= 1, seconds=20)
        server.kill()  # Redis SIGKILLed: every connection drops at once
        server.wait()
        time.sleep(8)
        assert worker.poll() is None, "the worker exited while Redis was away"
        server = start_redis()  # back, with its AOF
        enqueue_events(make_queue(conn), batch("after"), source="events")
        wait_until(lambda: applied(conn, "after") == 50, seconds=60)
        assert worker.poll() is None
        # One command listener per live worker: the quit worker's is stopped, not left to reconnect.
        time.sleep(3)
        assert len(conn.pubsub_channels("rq:pubsub:*")) == 1, conn.pubsub_channels("rq:pubsub:*")
    finally:
        stop(worker)
        server.terminate()
        server.wait(timeout=10)
