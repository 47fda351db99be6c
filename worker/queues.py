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
from redis.connection import Connection
from redis.exceptions import ExecAbortError, ResponseError
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from rules.hubspot_map import HubSpotOp

PROCESS_EVENTS = "worker.jobs.process_events"
PROCESS_BATCH = "worker.jobs.process_batch"
PROCESS_BODY = "worker.jobs.process_body"  # queued by versions before 2026-11-25; still run
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
# ~1 ms per request): write the job hash as RQ 3 does and push its id, in one
# MULTI/EXEC. RQ reads uncompressed job data (Job.restore falls back when zlib
# fails) and reads every field with a falsy default, so the fields RQ writes empty
# are left out. Every integration test runs these jobs through a real RQ worker.
_RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_RETRY_INTERVALS = json.dumps(RETRY.intervals)
_TIMEOUT = str(JOB_TIMEOUT)
_RETRIES = str(RETRY.max)
_BATCH_HEAD = b'["' + PROCESS_BATCH.encode() + b'",null,['


def enqueue_events(queue: Queue, wire_events: list[list[Any]], source: str, ops: list[HubSpotOp] | None = None) -> str:
    """Queue one batch of canonical events (wire form) and adapter operations as one JSON job."""
    return _enqueue(queue, *_events_data(wire_events, source, ops))


def _events_data(wire_events: list[list[Any]], source: str, ops: list[HubSpotOp] | None) -> tuple[bytes, str]:
    kwargs: dict[str, Any] = {"source": source}
    if ops:
        kwargs["ops"] = ops
    description = f"process_events: {len(wire_events)} events, {len(ops or [])} ops from {source}"
    return json.dumps([PROCESS_EVENTS, None, [wire_events], kwargs], separators=(",", ":")).encode(), description


def enqueue_batch(queue: Queue, body: bytes, count: int, source: str) -> str:
    """Queue a canonical batch the fast path validated, as the JSON it arrived in.

    `body` must be one UTF-8 JSON value with nothing around it — what `rules.fastparse`
    decoded whole. Spliced between the job data's brackets it is then valid JSON that the
    worker reads back as `{"events": [...]}`: no escaping into a string, no re-encoding
    (~35 us less per 100-event request than `json.dumps`).
    """
    tail = json.dumps({"source": source}, separators=(",", ":")).encode()
    data = b"".join((_BATCH_HEAD, body, b"],", tail, b"]"))  # one copy of the body, not four
    return _enqueue(queue, data, f"process_batch: {count} events from {source}")


def events_job(queue: Queue, wire_events: list[list[Any]], source: str) -> list[tuple[str | bytes, ...]]:
    """The Redis commands that queue a `process_events` job, for a caller's own transaction.

    The outbox drain records what the CRM confirmed (a break-up task created) in the same
    MULTI/EXEC that marks the action done: both happen, or neither.
    """
    return _job_commands(queue, *_events_data(wire_events, source, None))[1]


def _enqueue(queue: Queue, data: bytes, description: str) -> str:
    job_id, commands = _job_commands(queue, data, description)
    transaction(queue.connection, commands)
    return job_id


def _job_commands(queue: Queue, data: bytes, description: str) -> tuple[str, list[tuple[str | bytes, ...]]]:
    # What RQ 3's enqueue writes (tests/webhooks/test_app.py compares the two jobs).
    # result_ttl 0: a finished job's payload names leads, keep nothing (GDPR). The
    # description replaces RQ's default, the call with its arguments, which would put
    # lead ids and emails into the worker's log.
    job_id = str(uuid.uuid4())
    now = datetime.now(tz=UTC).strftime(_RQ_TIME)
    fields: tuple[str | bytes, ...] = (
        *("created_at", now, "enqueued_at", now, "data", data, "description", description, "origin", queue.name),
        *("timeout", _TIMEOUT, "result_ttl", "0", "status", "queued", "retries_left", _RETRIES),
        *("retry_intervals", _RETRY_INTERVALS),
    )
    return job_id, [
        ("SADD", "rq:queues", queue.key),
        ("HSET", f"rq:job:{job_id}", *fields),
        ("RPUSH", queue.key, job_id),
    ]


def transaction(connection: redis.Redis, commands: list[tuple[str | bytes, ...]]) -> None:
    """Apply `commands` atomically in one MULTI/EXEC round trip; raise the first error.

    redis-py's transaction pipeline does the same with per-command bookkeeping that
    costs ~50 us per ingest request. A Lua script would also be one command, but
    copying an 18 KB body into Lua and back costs Redis ~45 us more per call than the
    HSET itself (INFO commandstats under bench.ingest). Connections still come from
    redis-py's pool (which replaces ones Redis closed), and replies go through its parser.
    """
    pool = connection.connection_pool
    packed = None
    for attempt in (1, 2):
        conn = pool.get_connection()
        try:
            packed = packed or _resp([("MULTI",), *commands, ("EXEC",)])
            try:
                conn.send_packed_command([packed])
            except redis.ConnectionError:
                # Nothing was applied: EXEC goes last and was not sent whole. A pooled
                # connection Redis dropped (restart, failover, idle timeout) gets one fresh try.
                conn.disconnect()
                if attempt == 2:
                    raise
                continue
            _read_transaction(conn, len(commands))
            return
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(conn)


def _read_transaction(conn: Connection, queued: int) -> None:
    errors: list[ResponseError] = []
    for _ in range(queued + 1):  # +OK for MULTI, +QUEUED per command (or why it was refused)
        try:
            conn.read_response()
        except ResponseError as exc:
            errors.append(exc)
    try:
        replies = conn.read_response()
    except ExecAbortError:
        raise errors[0] if errors else ExecAbortError("the transaction was discarded") from None
    failed = [r for r in replies or () if isinstance(r, Exception)]
    if errors or failed:
        raise (errors or failed)[0]


def _resp(commands: list[tuple[str | bytes, ...]]) -> bytes:
    """Encode commands as RESP arrays of bulk strings, the one request format Redis reads.

    As one bytes object: redis-py's pack_commands leaves values over 6 KB as separate
    chunks, one sendall each (three syscalls per ingest request instead of one), and
    its per-argument encoder costs ~15 us more here.
    """
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if isinstance(arg, bytes) else arg.encode()
            parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)
