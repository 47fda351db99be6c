"""A worker told to stop (SIGTERM, as a platform does on deploy) finishes its batch: nothing lost."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest
import redis

from rules.events import Crm, Event, EventType
from tests.integration.conftest import start_worker, stop, wait_until
from worker.queues import enqueue_events, make_queue
from worker.store import PREFIX

pytestmark = pytest.mark.integration


def test_sigterm_mid_batch_finishes_the_batch(redis_db: redis.Redis) -> None:
    queue = make_queue(redis_db)
    at = int((datetime.now(tz=UTC) - timedelta(days=1)).timestamp() * 1000)
    for b in range(6):
        batch = [
            Event(f"sd-{b}-{i}", EventType.EMAIL_SENT, Crm.HUBSPOT, f"sd-{b}-{i}", at, {}).to_wire()
            for i in range(1000)
        ]
        enqueue_events(queue, batch, source="events")
    worker = start_worker()
    try:
        wait_until(lambda: queue.started_job_registry.count >= 1, seconds=20)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        stop(worker)
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
