"""Processing benchmark: one `pruner worker --burst` draining queued event batches, against RQ's no-op rate.

1. Fill DB 13's `pruner` queue with N batches (validated with rules.fastparse.fast_count, queued
   with worker.queues.enqueue_batch — exactly what the web does), spread over a set of leads.
2. Start `.venv/bin/pruner worker --burst` (REDIS_URL on DB 13, PRUNER_DRY_RUN=1, no CRM credentials:
   decisions are recorded, nothing is called) and time the drain from the first job leaving the queue
   until the queue, RQ's in-flight list and started registry are empty and the worker's
   successful+failed count has reached N, polling Redis every 5 ms: process start-up (imports,
   registration, scheduler) is not counted.
3. Baseline, same run, same queue setup and the same worker command: M no-op jobs
   (`bench.jobs.noop`, JSON serializer, same enqueue options), drained the same way.

Reports events/s, no-op jobs/s and their ratio: how many events a worker applies in the time RQ
needs to run one empty job (target >= 30).

`--history N` first gives every lead N events spread over the past year (applied and decided
as the worker does, not timed): leads with a past, as after a backfill or months of use.
`--order live` stamps the queued events as webhooks arrive: each batch a few minutes after the
one before, one event in 20 up to an hour late (a retry). `--order random` (the default, and
the first version of this benchmark) stamps every event at random within the last two days,
so a lead's events arrive out of order and almost every one is late: the full-replay path.

    .venv/bin/python -m bench.processing [--batches 200] [--leads 2000] [--noop-jobs 1000]
    .venv/bin/python -m bench.processing --leads 333 --history 60 --order live
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from bench.common import (
    BIN,
    REDIS_URL,
    BatchBuilder,
    bench_db,
    child_env,
    flush_bench_db,
    iso,
    lead_ids,
    load_note,
    stop,
    year_of_events,
)
from bench.jobs import NOOP
from rules.fastparse import fast_count
from worker.keys import PREFIX
from worker.queues import JOB_TIMEOUT, RETRY, enqueue_batch, make_queue

TARGET_RATIO = 30.0


@dataclass
class Drain:
    jobs: int  # jobs queued by the benchmark
    seconds: float  # first dequeue -> queue, in-flight and started jobs all empty
    process_seconds: float  # worker start -> exit, for comparison
    ran: int  # jobs the worker finished (more than `jobs` if jobs enqueue follow-up jobs)
    failed: int

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds


def drain(conn: redis.Redis, queue: Queue, jobs: int, log: Path, poll: float, timeout: float = 300.0) -> Drain:
    """Run one burst worker on the filled queue; time first dequeue -> all jobs finished.

    Finished means: nothing waiting, nothing between dequeue and start (RQ's intermediate list),
    nothing started, and the worker's successful+failed count has reached the jobs queued.
    """
    workers_key = WORKERS_BY_QUEUE_KEY % queue.name
    busy_keys = [queue.key, queue.intermediate_queue_key]
    wip_key = StartedJobRegistry(queue=queue).key
    cmd = [str(BIN / "pruner"), "worker", "--burst"]
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            first: float | None = None
            last: float | None = None
            worker_key: bytes | None = None
            done = failed = 0
            deadline = started + timeout
            while last is None:
                now = time.perf_counter()
                if now > deadline:
                    raise RuntimeError(f"the worker did not finish {jobs} jobs in {timeout:.0f} s (see {log})")
                pipe = conn.pipeline(transaction=False)
                for key in busy_keys:
                    pipe.llen(key)
                pipe.zcard(wip_key)
                if worker_key is None:
                    pipe.smembers(workers_key)
                else:
                    pipe.hmget(worker_key, "successful_job_count", "failed_job_count")
                waiting, moving, running, extra = pipe.execute()
                if first is None and waiting < jobs:
                    first = now
                if worker_key is None:
                    if extra:
                        worker_key = sorted(extra)[0]
                else:
                    done, failed = (int(v or 0) for v in extra)
                    if done + failed >= jobs and waiting == moving == running == 0:
                        last = now
                if last is None and proc.poll() is not None:
                    if waiting == 0 and first is not None:
                        last = now  # finished and exited between two polls
                    else:
                        raise RuntimeError(f"the worker exited with {proc.returncode} early (see {log})")
                time.sleep(poll)
            proc.wait(timeout=60)
        finally:
            stop(proc)
    assert first is not None
    if failed:
        lines = log.read_text(errors="replace").splitlines()
        errors = [line for line in lines if "Error" in line or "exception" in line.lower()]
        print(f"   !! {failed} job(s) failed; worker log excerpt:")
        print("\n".join("   | " + line[:200] for line in errors[-6:]))
    return Drain(jobs, last - first, time.perf_counter() - started, done + failed, failed)


LATE_EVERY = 20  # --order live: one event in 20 is a retry, up to an hour late


def fill_events(queue: Queue, batches: int, events: int, leads: int, order: str = "random") -> int:
    """Queue `batches` validated batches; return the number of events."""
    builder = BatchBuilder(lead_ids(leads), events, seed=11)
    now_ms = int(time.time() * 1000)
    start = datetime.now(tz=UTC) - timedelta(minutes=3 * batches + 60)
    total = 0
    for k in range(batches):
        if order == "live":
            # Batch k: the three minutes after batch k-1's, and a few retries from the hour before.
            at = start + timedelta(minutes=3 * k)
            builder.stamps = [iso(at + timedelta(seconds=s)) for s in range(0, 180, 2)]
            builder.stamps += [iso(at - timedelta(minutes=m)) for m in range(1, 61, 12)]
        body = builder.body()
        count = fast_count(body, now_ms)
        if count is None:
            raise RuntimeError("the fast path declined a benchmark batch")
        enqueue_batch(queue, body, count, source="events")
        total += count
    return total


def fill_noop(queue: Queue, jobs: int) -> None:
    """Queue `jobs` no-op jobs with the options enqueue_batch uses."""
    for _ in range(jobs):
        queue.enqueue(NOOP, result_ttl=0, retry=RETRY, job_timeout=JOB_TIMEOUT)


def preload(conn: redis.Redis, leads: int, per_lead: int) -> int:
    """Give every lead `per_lead` events over the past year, decided as the worker decides; return how many."""
    from worker.config import Config
    from worker.jobs import decider
    from worker.store import LeadStore

    store = LeadStore(conn)
    now = datetime.now(tz=UTC)
    decide = decider(Config.from_env(child_env()), int(now.timestamp() * 1000))
    for batch in year_of_events(lead_ids(leads), per_lead, now - timedelta(days=1), random.Random(5), "pre-"):
        for lo in range(0, len(batch), 1000):
            store.apply_batch(batch[lo : lo + 1000], decide)
    return leads * per_lead


def stored_events(conn: redis.Redis) -> int:
    """Count the events of every lead log of DB 13, folded ones included (eventlog.read)."""
    from worker import eventlog

    total = 0
    keys = list(conn.scan_iter(match=f"{PREFIX}*", count=1000))
    for start in range(0, len(keys), 1000):
        for blob in conn.mget(keys[start : start + 1000]):
            whole = eventlog.read(blob)
            total += len(whole.events) + (whole.fold.events if whole.fold is not None else 0)
    return total


def timed(label: str, fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    print(f"   {label} in {seconds:.1f} s", flush=True)
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.processing", description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=200, help="event batches to queue (200)")
    p.add_argument("--events", type=int, default=100, help="events per batch (100)")
    p.add_argument("--leads", type=int, default=2000, help="leads the events are spread over (2000: ~10 per lead)")
    p.add_argument("--noop-jobs", type=int, default=1000, help="no-op jobs for the baseline (1000)")
    p.add_argument("--poll-ms", type=float, default=5.0, help="Redis polling interval while draining (5 ms)")
    p.add_argument("--history", type=int, default=0, help="events every lead holds before the timed run (0)")
    p.add_argument("--order", choices=("random", "live"), default="random", help="how queued events are dated")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    poll = args.poll_ms / 1000
    print("== processing: one burst worker draining the queue ==")
    print(f"Redis: {REDIS_URL}; worker: {BIN / 'pruner'} worker --burst (SimpleWorker, JSON serializer)")
    print(f"before: {load_note()}")
    with bench_db() as conn, tempfile.TemporaryDirectory(prefix="pruner-bench-") as tmp:
        queue = make_queue(conn)
        preloaded: list[int] = [0]
        if args.history:
            print(f"-- giving each of {args.leads} leads {args.history} events over the past year ...", flush=True)
            timed("preloaded", lambda: preloaded.append(preload(conn, args.leads, args.history)))
        print(f"-- queueing {args.batches} batches x {args.events} events over {args.leads} leads,"
              f" dated {args.order} ...", flush=True)  # fmt: skip
        events: list[int] = []
        timed("queued", lambda: events.append(fill_events(queue, args.batches, args.events, args.leads, args.order)))
        work = drain(conn, queue, args.batches, Path(tmp) / "events.log", poll)
        stored = stored_events(conn) - preloaded[-1]
        total_events = events[0]
        flush_bench_db(conn)
        print(f"-- queueing {args.noop_jobs} no-op jobs ...", flush=True)
        timed("queued", lambda: fill_noop(queue, args.noop_jobs))
        noop = drain(conn, queue, args.noop_jobs, Path(tmp) / "noop.log", poll)
        flush_bench_db(conn)

    events_per_s = total_events / work.seconds
    print(f"after: {load_note()}")
    print()
    head = f"{'run':<8} {'jobs':>6} {'events':>7} {'drain s':>8} {'jobs/s':>8} {'events/s':>9}"
    print(head + f" {'process s':>9} {'failed':>6}")
    print(
        f"{'events':<8} {work.jobs:>6} {total_events:>7} {work.seconds:>8.2f} {work.jobs_per_second:>8,.0f}"
        f" {events_per_s:>9,.0f} {work.process_seconds:>9.2f} {work.failed:>6}"
    )
    print(
        f"{'no-op':<8} {noop.jobs:>6} {'-':>7} {noop.seconds:>8.2f} {noop.jobs_per_second:>8,.0f}"
        f" {'-':>9} {noop.process_seconds:>9.2f} {noop.failed:>6}"
    )
    print(f"\nevents stored in lead logs: {stored} of {total_events} queued (all distinct ids)")
    if work.ran > work.jobs:
        print(f"the event batches made the worker run {work.ran - work.jobs} follow-up job(s), counted in the time")
    per_job_ms = work.seconds / work.jobs * 1000
    noop_ms = noop.seconds / noop.jobs * 1000
    print(f"per batch: {per_job_ms:.2f} ms, of which RQ's own per-job cost ~{noop_ms:.2f} ms (the no-op job)")
    ratio = events_per_s / noop.jobs_per_second
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"ratio events/s / no-op jobs/s = {ratio:.1f}x  ({verdict} the target >= {TARGET_RATIO:g}x)")
    if work.failed or noop.failed or stored != total_events:
        print("!! some jobs failed or events are missing: the numbers above are not trustworthy")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
