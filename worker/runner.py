"""Long-running processes: the RQ worker and the clock (RQ's cron scheduler)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any

import redis
from rq.cron import CronJob, CronScheduler
from rq.job import Job
from rq.worker import SimpleWorker

from worker import jobs, reindex, upgrades
from worker.config import Config
from worker.queues import connect, make_queue
from worker.reaper import Liveness

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 60
# How often a worker cleans RQ's registries (RQ's default: 10 minutes). That is when a
# job abandoned by a killed worker is retried, once its started-registry entry expires
# (a SimpleWorker sets it to the job timeout + 60 s, so a slow live job is never taken
# for dead), so this bounds how late its events arrive. One worker at a time does it.
MAINTENANCE_SECONDS = 60
# The watchdog requeues the jobs of workers dead for 15 s (worker/reaper.py) and queues a drain
# for outboxes whose drain died (its lock expires in 15 s: worker/actions.py).
WATCH_INTERVAL_SECONDS = 15


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """In a child forked by the worker (RQ's scheduler), ask for SIGTERM when the worker dies.

    RQ runs its scheduler in a forked process that outlives a SIGKILLed or OOM-killed worker and
    polls Redis forever, holding the scheduler lock (seen as orphans with parent PID 1 after the
    test suite). SIGTERM makes it stop the way RQ stops it: release its locks and exit.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the worker died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def run_worker(config: Config, burst: bool = False, connection: redis.Redis | None = None) -> bool:
    """Run an RQ worker on Pruner's queue until stopped (SIGTERM: finish the job, then exit)."""
    if not burst:  # a burst worker runs the scheduler inline and forks nothing
        parent = os.getpid()
        os.register_at_fork(after_in_child=lambda: _die_with_parent(parent))
    connection = connection or connect(config.redis_url)
    queue = make_queue(connection, config.queue_name)
    # SimpleWorker runs jobs in-process: forking per job costs ~15 ms, more than a
    # whole 100-event batch takes to apply. RQ's warm shutdown still lets the
    # current batch finish on SIGTERM, and a killed worker's batch is retried (Retry)
    # by the next registry maintenance.
    # Leads stored before the list index existed, or indexed by an earlier version (or a
    # brand-new store, where this takes a millisecond): one worker indexes them before it
    # starts, the others start at once.
    reindex.ensure_index(connection)
    if config.dry_run:
        upgrades.note_dry_run(connection)  # it sends nothing: the next live start acts on what it decided
    else:
        upgrades.record_existing_breakup_tasks(connection, queue, task_clock=jobs.task_clock(config))
    wait_s = 1.0
    lost: Exception | None = None
    while True:
        worker = SimpleWorker(
            [queue],
            connection=connection,
            serializer=queue.serializer,
            log_job_description=False,  # descriptions of old jobs may hold arguments: no personal data in logs
            maintenance_interval=MAINTENANCE_SECONDS,
        )
        try:
            # The clock's watchdog requeues a started job within seconds once this key stops (worker/reaper.py).
            with Liveness(connection, worker.name):
                worked = bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            worked, lost = False, exc  # raised while tearing down after the outage
        else:
            if burst or worker._stop_requested or _answers(connection):
                return worked  # a burst done, a SIGTERM, or an exit that was not about Redis
            lost = None
        _stop_listening(worker)
        if worker._stop_requested:
            return worked
        # RQ's worker quits on a Redis error outside its dequeue (a heartbeat, a job's bookkeeping):
        # outlive the outage instead of exiting 1. A job cut off mid-way is requeued by the
        # watchdog (this worker's liveness key lapses with the outage), and counts once.
        log.warning("worker lost Redis (%s); starting again once it answers", type(lost).__name__ if lost else "quit")
        while not _answers(connection):
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 30.0)
        log.warning("Redis answers again; worker starting")
        wait_s = 1.0


def _stop_listening(worker: SimpleWorker) -> None:
    """Stop the quit worker's command listener, which RQ leaves running when Redis is away.

    RQ's teardown unsubscribes first, which raises without Redis, so the thread is never
    stopped: it logs every 2 s through the outage, then reconnects and listens on for a
    worker that no longer exists, one more connection per outage.
    """
    thread = worker.pubsub_thread
    if thread is None or not thread.is_alive():
        return
    thread.stop()
    thread.join(timeout=5)  # it notices within its 2 s retry sleep
    try:
        worker.pubsub.close()
    except redis.RedisError:
        pass


def _answers(connection: redis.Redis) -> bool:
    try:
        return bool(connection.ping())
    except redis.RedisError:
        return False


class JsonCronJob(CronJob):
    """A CronJob that enqueues with the JSON serializer (RQ's CronJob always uses pickle)."""

    def enqueue(self, connection: redis.Redis) -> Job:
        if not self.func:
            raise ValueError("cron job has no function")
        queue = make_queue(connection, self.queue_name)
        job = queue.enqueue(self.func, args=self.args, kwargs=self.kwargs, **self.job_options)
        log.info("clock enqueued %s", self.func_name)
        return job


def run_clock(config: Config, connection: redis.Redis | None = None) -> None:
    """Enqueue the sweep every minute, the watchdog every 15 s, the stats every 5 minutes, and, with a
    HubSpot token, reconciliation every PRUNER_RECONCILE_MINUTES (RQ's cron)."""
    connection = connection or connect(config.redis_url)
    scheduler = CronScheduler(connection=connection)
    options: dict[str, Any] = {"interval": SWEEP_INTERVAL_SECONDS, "job_timeout": 300, "result_ttl": 0}
    cron_job = scheduler.register(jobs.sweep, config.queue_name, **options)
    cron_job.__class__ = JsonCronJob  # same state, JSON enqueue; see JsonCronJob
    stats_options: dict[str, Any] = {"interval": jobs.STATS_INTERVAL_SECONDS, "job_timeout": 600, "result_ttl": 0}
    stats_job = scheduler.register(jobs.refresh_stats, config.queue_name, **stats_options)
    stats_job.__class__ = JsonCronJob  # the dashboard reads its snapshot instead of scanning every lead
    watch_options: dict[str, Any] = {"interval": WATCH_INTERVAL_SECONDS, "job_timeout": 60, "result_ttl": 0}
    watch_job = scheduler.register(jobs.watchdog, config.queue_name, **watch_options)
    watch_job.__class__ = JsonCronJob  # requeues jobs of dead workers; drains outboxes a dead drain left
    if config.reconcile_minutes and (config.hubspot_access_token or config.salesforce_instance_url):
        interval = config.reconcile_minutes * 60
        reconcile_options: dict[str, Any] = {"interval": interval, "job_timeout": interval, "result_ttl": 0}
        reconcile_job = scheduler.register(jobs.reconcile, config.queue_name, **reconcile_options)
        reconcile_job.__class__ = JsonCronJob  # what webhooks missed comes back within one interval
    scheduler.start()
