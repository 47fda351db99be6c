"""The RQ queue Pruner uses, always with the JSON serializer.

RQ's default serializer is pickle: anyone able to write to Redis could then run
code in the worker. Every Queue and Worker in Pruner is built here, with JSON.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

PROCESS_EVENTS = "worker.jobs.process_events"
# Bounded retries with backoff: a failing batch is retried, then parked in the
# failed registry for `pruner replay` — never retried forever, never dropped.
RETRY = Retry(max=5, interval=[1, 5, 30, 120, 600])
JOB_TIMEOUT = 120


def connect(url: str, timeout: float | None = None) -> redis.Redis:
    """Return a Redis client for `url` (`rediss://` accepted, self-signed certificates allowed)."""
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if url.startswith("rediss://"):
        # Managed Redis (Heroku and co.) presents self-signed certificates.
        kwargs["ssl_cert_reqs"] = "none"
    return redis.Redis.from_url(url, **kwargs)


def make_queue(connection: redis.Redis, name: str = "pruner") -> Queue:
    """Return Pruner's queue bound to `connection`, JSON-serialized."""
    return Queue(name, connection=connection, serializer=JSONSerializer)


def enqueue_events(
    queue: Queue, wire_events: list[list[Any]], source: str, ops: list[dict[str, Any]] | None = None
) -> str:
    """Queue one batch of canonical events (wire form) and adapter operations as one job."""
    kwargs: dict[str, Any] = {"source": source}
    if ops:
        kwargs["ops"] = ops
    job = queue.enqueue(
        PROCESS_EVENTS,
        args=(wire_events,),
        kwargs=kwargs,
        result_ttl=0,  # a finished job's payload names leads: keep nothing (GDPR)
        # RQ logs a job's description; the default is the call with its arguments,
        # which would put lead ids and emails into the worker's log.
        description=f"process_events: {len(wire_events)} events, {len(ops or [])} ops from {source}",
        retry=RETRY,
        job_timeout=JOB_TIMEOUT,
    )
    return str(job.id)
