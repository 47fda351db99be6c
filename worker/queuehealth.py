"""How the queue is doing, read one way for `/metrics`, the dashboard and the webhooks' backpressure.

They used to read it three times over, each its own way, so `/metrics` and `/dashboard` could
disagree about the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue, Worker

from worker import metrics as worker_metrics


@dataclass(frozen=True)
class QueueHealth:
    queued: int
    started: int
    scheduled: int
    failed: int
    workers: int
    oldest_wait_s: float  # how long the oldest queued job has waited (0 when none waits)
    # The last batch a worker applied: queue_seconds (enqueued -> processed), event_seconds
    # (newest event's time -> processed), at (when); empty before the first batch.
    last_batch: dict[str, float]


def oldest_wait_s(queue: Queue, now: float) -> float:
    """How long the oldest queued job has waited, in seconds (0 when the queue is empty)."""
    oldest = queue.get_job_ids(0, 1)
    job = queue.fetch_job(oldest[0]) if oldest else None
    return max(0.0, now - job.enqueued_at.timestamp()) if job is not None and job.enqueued_at else 0.0


def read(connection: redis.Redis, queue: Queue, now: float) -> QueueHealth:
    """Read the queue's registries, its workers, its lag and the last batch's lag (raises RedisError)."""
    raw: dict[bytes, bytes] = connection.hgetall(worker_metrics.LAG_KEY)  # type: ignore[assignment]
    return QueueHealth(
        queued=queue.count,
        started=queue.started_job_registry.count,
        scheduled=queue.scheduled_job_registry.count,
        failed=queue.failed_job_registry.count,
        workers=Worker.count(queue=queue),
        oldest_wait_s=oldest_wait_s(queue, now),
        last_batch={k.decode(): float(v) for k, v in raw.items()},
    )
