"""The RQ queue Pruner uses, always with the JSON serializer.

RQ's default serializer is pickle: anyone able to write to Redis could then run
code in the worker. Every Queue and Worker in Pruner is built here, with JSON.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from redis.commands.core import Script
from rq import Queue, Retry
from rq.serializers import JSONSerializer

PROCESS_EVENTS = "worker.jobs.process_events"
PROCESS_BODY = "worker.jobs.process_body"
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


# One round trip instead of RQ's Queue.enqueue (Job object, zlib, 2-3 round trips,
# ~1 ms per request): write the job hash exactly as RQ 3 does and push its id. RQ
# reads uncompressed job data (Job.restore falls back when zlib fails), and every
# integration test runs these jobs through a real RQ worker.
_ENQUEUE_LUA = """
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('HSET', KEYS[1], 'created_at', ARGV[2], 'enqueued_at', ARGV[2], 'data', ARGV[3], 'description', ARGV[4],
  'origin', ARGV[5], 'timeout', ARGV[6], 'result_ttl', '0', 'status', 'queued', 'retries_left', ARGV[7],
  'retry_intervals', ARGV[8], 'success_callback_name', '', 'failure_callback_name', '', 'stopped_callback_name', '',
  'started_at', '', 'ended_at', '', 'last_heartbeat', '', 'worker_name', '', 'group_id', '')
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""
_RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_RETRY_INTERVALS = json.dumps(RETRY.intervals)


def enqueue_events(
    queue: Queue, wire_events: list[list[Any]], source: str, ops: list[dict[str, Any]] | None = None
) -> str:
    """Queue one batch of canonical events (wire form) and adapter operations as one JSON job."""
    kwargs: dict[str, Any] = {"source": source}
    if ops:
        kwargs["ops"] = ops
    description = f"process_events: {len(wire_events)} events, {len(ops or [])} ops from {source}"
    return _enqueue(queue, PROCESS_EVENTS, wire_events, kwargs, description)


def enqueue_body(queue: Queue, body: str, count: int, source: str) -> str:
    """Queue a validated canonical batch as the JSON text it arrived in (no re-encoding per event)."""
    return _enqueue(queue, PROCESS_BODY, body, {"source": source}, f"process_body: {count} events from {source}")


def _enqueue(queue: Queue, func: str, arg: Any, kwargs: dict[str, Any], description: str) -> str:
    # Field by field what RQ 3's enqueue writes (tests/test_app.py compares the two hashes).
    # result_ttl 0: a finished job's payload names leads, keep nothing (GDPR). The
    # description replaces RQ's default, the call with its arguments, which would put
    # lead ids and emails into the worker's log.
    job_id = str(uuid.uuid4())
    now = datetime.now(tz=UTC).strftime(_RQ_TIME)
    data = json.dumps([func, None, [arg], kwargs], separators=(",", ":"))
    args = [job_id, now, data, description, queue.name, str(JOB_TIMEOUT), str(RETRY.max), _RETRY_INTERVALS]
    Script(queue.connection, _ENQUEUE_LUA)(keys=[f"rq:job:{job_id}", queue.key, "rq:queues"], args=args)
    return job_id
