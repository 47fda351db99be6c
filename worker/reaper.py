"""Jobs whose worker died are put back on the queue within seconds, not minutes.

RQ finds an abandoned job when its started-registry entry expires: for a `SimpleWorker` that
is the job's timeout + 60 s after it started, then the next registry maintenance, then a
retry interval that needs RQ's scheduler, which may have died with the same worker (FINDINGS
item 4: 3 to 6 minutes, acknowledged events invisible meanwhile, do-not-contacts included).

Here each worker process keeps a short-lived "alive" key fresh from a thread (`Liveness`),
which a SIGKILL, an OOM kill or a lost host stops at once; the clock runs `reap` every 15 s:
a started job whose worker's key is gone is requeued at once (one of its retries used), or
failed when it has none left, the way RQ's own cleanup would. Applying a batch twice is
harmless (events are deduplicated, actions are idempotent), so a false alarm costs nothing
but the work.

A job can also be lost between RQ's two steps of taking it: the worker moves its id from the
queue to the queue's "intermediate" list (BLMOVE), then records it as started. A worker
SIGKILLed, or SIGTERMed while idle (RQ raises its stop at once), in between leaves the id in
that list only, invisible to the started registry; RQ fails such a job after a minute and
retries it through its scheduler (80 s to recover in the chaos suite). `rescue` puts it back
on the queue once two watchdog ticks have seen it there, unstarted.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

import redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue

log = logging.getLogger(__name__)

ALIVE_PREFIX = "pruner:alive:"
# When the watchdog first saw a job id in the intermediate list without a started execution.
STUCK_PREFIX = "pruner:stuck:"
STUCK_TTL_S = 600
ALIVE_TTL_MS = 15_000
# A job this young may belong to a worker whose first beat has not landed yet.
MIN_AGE_S = 5.0


def alive_key(worker_name: str) -> str:
    return f"{ALIVE_PREFIX}{worker_name}"


class Liveness:
    """Keep `pruner:alive:{worker}` set while this process lives (a thread renews it every 5 s)."""

    def __init__(self, connection: redis.Redis, worker_name: str, ttl_ms: int = ALIVE_TTL_MS) -> None:
        self.connection, self.key, self.ttl_ms = connection, alive_key(worker_name), ttl_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)

    def _beat(self) -> None:
        try:
            self.connection.set(self.key, "1", px=self.ttl_ms)
        except redis.RedisError:
            pass  # Redis away for a moment: the next beat tries again

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            self._beat()

    def __enter__(self) -> Liveness:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.connection.delete(self.key)
        except redis.RedisError:
            pass


def reap(connection: redis.Redis, queue: Queue, now: float | None = None) -> list[str]:
    """Requeue (or fail) the started jobs of `queue` whose worker is no longer alive; return their ids."""
    now = time.time() if now is None else now
    registry = queue.started_job_registry
    reaped = []
    for member in connection.zrange(registry.key, 0, -1):
        composite = member.decode() if isinstance(member, bytes) else str(member)
        execution = Execution.from_composite_key(composite, connection)
        fields = {k.decode(): v.decode() for k, v in connection.hgetall(execution.key).items()}  # type: ignore[union-attr]
        worker = fields.get("worker_name", "")
        if not worker or now - float(fields.get("created_at") or now) < MIN_AGE_S:
            continue  # an execution RQ recorded without a worker, or just started
        if connection.exists(alive_key(worker)):
            continue
        try:
            job = Job.fetch(execution.job_id, connection=connection, serializer=queue.serializer)
        except Exception:  # the job is gone (finished and deleted meanwhile): just drop the entry
            connection.zrem(registry.key, composite)
            continue
        with connection.pipeline() as pipe:
            execution.delete(job, pipe)  # entry and execution record together (FINDINGS item 4)
            if job.get_status(refresh=True) != JobStatus.STARTED:
                pipe.execute()
                continue
            if job.retries_left:
                job.retries_left -= 1
                # What rq's Job.retry does when no interval is due; not Job.retry itself, whose
                # interval (1 s first) would wait for RQ's scheduler, which may have died too.
                queue._enqueue_job(job, pipeline=pipe, at_front=True)
                what = f"requeued, {job.retries_left} retries left"
            else:
                registry_failed = queue.failed_job_registry
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                registry_failed.add(job, exc_string="abandoned: its worker died", pipeline=pipe)
                what = "failed: no retries left"
            pipe.execute()
        log.warning("job %s abandoned by dead worker %s: %s", job.id, worker, what)
        reaped.append(job.id)
    return reaped


def rescue(connection: redis.Redis, queue: Queue, now: float | None = None) -> list[str]:
    """Requeue jobs left in `queue`'s intermediate list by a worker that died while taking them.

    A job id seen there twice, `MIN_AGE_S` apart, with no started execution, is requeued at
    the front; a live worker needs milliseconds between the two steps, not seconds.
    """
    now = time.time() if now is None else now
    intermediate = queue.intermediate_queue
    started = {
        (m.decode() if isinstance(m, bytes) else str(m)).split(":", 1)[0]
        for m in connection.zrange(queue.started_job_registry.key, 0, -1)
    }
    rescued = []
    for job_id in intermediate.get_job_ids():
        if job_id in started:
            continue
        seen_key = f"{STUCK_PREFIX}{job_id}"
        if connection.set(seen_key, str(now), nx=True, ex=STUCK_TTL_S):
            continue  # first sighting: give a live worker its moment
        first_seen = float(connection.get(seen_key) or now)
        if now - first_seen < MIN_AGE_S:
            continue
        job = queue.fetch_job(job_id)
        with connection.pipeline() as pipe:
            pipe.lrem(intermediate.key, 1, job_id)
            pipe.delete(seen_key)
            if job is not None:
                queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        if job is not None:
            log.warning("job %s was taken by a worker that died before starting it: requeued", job_id)
            rescued.append(job_id)
    return rescued
