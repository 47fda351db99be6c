"""RQ job functions: module-level, plain-JSON arguments, clients from the job's connection."""

from __future__ import annotations

import json
import logging
import time
import uuid
from functools import lru_cache
from typing import Any

import redis
from rq import get_current_job

from rules.events import Crm, Event, EventType, format_ms
from rules.fastparse import parse_decoded
from rules.hubspot_map import HubSpotOp
from worker import hubspot_ops, reindex
from worker.action import Action
from worker.actions import OUTBOX_SOURCE, drain, pending_key, queue_erasure_forwards, watch
from worker.aggregates import COMPLETE_KEY
from worker.backfill_sinks import SOURCE as BACKFILL_SOURCE
from worker.config import Config
from worker.crm import executor_for
from worker.crm.hubspot_backfill import HubSpotHistory, search_limiter
from worker.crm.hubspot_client import build_client
from worker.crm.salesforce import build_client as build_salesforce_client
from worker.crm.salesforce_backfill import SalesforceHistory
from worker.decide import Decider
from worker.gdpr import purge_payloads
from worker.locks import release
from worker.metrics import record_batch
from worker.policyfile import cached_policy
from worker.queues import JOB_TIMEOUT, RETRY, events_job, make_queue
from worker.reaper import reap, rescue
from worker.reconcile import reconcile_hubspot, reconcile_salesforce
from worker.stats import migrate, store_stats_snapshot
from worker.store import LeadStore
from worker.taskcap import TaskCap, release_due
from worker.upgrades import SOURCE as UPGRADE_SOURCE
from worker.upgrades import note_dry_run, release_after_dry_run

log = logging.getLogger(__name__)

SWEEP_LOCK = "pruner:sweep:lock"
SWEEP_CHUNK = 500
# A preview prints one line per lead: enough to see what would happen, not a report of millions.
SWEEP_PREVIEW_LIMIT = 1000


@lru_cache(maxsize=1)
def _config() -> Config:
    return Config.from_env()


def _connection() -> redis.Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this function must run inside an RQ job")
    return job.connection


def suppression_key(config: Config) -> bytes | None:
    return config.suppression_key.encode() if config.suppression_key else None


def store_for(connection: redis.Redis, config: Config) -> LeadStore:
    """The lead store as every job writes to it, with the erasure key of `config`."""
    return LeadStore(connection, suppression_key(config))


RECONCILE_SOURCE = "reconcile"  # the decider's source for what reconciliation applies
# Batches that are not webhooks: history read back, or Pruner's own records.
HISTORY_SOURCES = frozenset({BACKFILL_SOURCE, UPGRADE_SOURCE, OUTBOX_SOURCE})


# A backfill's held decisions are acted on by the sweep this long after, at the latest, should
# the command never release them (killed after its jobs were applied): it releases them itself
# once its last job is applied, and the spool queues each lead's events together, so a lead's
# whole history is in well before.
HELD_FOR_MS = 60 * 60_000


def task_clock(config: Config) -> bool:
    """Whether a break-up's grace waits for its task (guardrail 7): on (the default), and live.

    A dry run creates no task: its break-ups run their grace from the decision.
    """
    return config.breakup_task_clock and not config.dry_run


def decider(config: Config, now_ms: int, source: str = "events") -> Decider:
    # A live backfill's batches decide on partial histories (it reads one object type after
    # another): their decisions are held, sending nothing, until it ends (worker/held.py).
    return Decider(
        cached_policy(config.policy_path),
        now_ms,
        dry_run=config.dry_run or source == BACKFILL_SOURCE,
        release_by_ms=now_ms + HELD_FOR_MS if source == BACKFILL_SOURCE and not config.dry_run else None,
        suppression_key=suppression_key(config),
        source=source,
        grace_from_task=task_clock(config),
    )


def process_events(
    events: list[list[Any]], source: str = "events", ops: list[HubSpotOp] | None = None
) -> dict[str, int]:
    """Apply one queued batch of canonical events (and adapter operations) and decide what it changes."""
    return _process([Event.from_wire(item) for item in events], source, ops)


def process_batch(batch: dict[str, Any], source: str = "events") -> dict[str, int]:
    """Apply a canonical `{"events": [...]}` batch queued as it arrived (validated at ingest)."""
    # Validated when it arrived; "too far in the future" was judged then, not now.
    return _process(parse_decoded(batch, now_ms=_NO_FUTURE_LIMIT), source, None)


def process_body(body: str, source: str = "events") -> dict[str, int]:
    """Apply a batch queued as JSON text by web processes before 2026-11-25 (a rolling upgrade's backlog)."""
    return process_batch(json.loads(body), source)


_NO_FUTURE_LIMIT = 2**62


def _process(batch: list[Event], source: str, ops: list[HubSpotOp] | None) -> dict[str, int]:
    config = _config()
    connection = _connection()
    store = store_for(connection, config)
    now_ms = int(time.time() * 1000)
    decide = decider(config, now_ms, source)
    received = len(batch)
    batch = list(batch)
    if ops:
        # Fetch first: if HubSpot is down the job fails before anything is written, and RQ retries it.
        if any(op["op"] in ("engagement", "deal") for op in ops):
            reader = hubspot_ops.hubspot_reader(config, connection)
            batch += hubspot_ops.fetch_events(ops, reader, cached_policy(config.policy_path).hubspot)
    result = store.apply_batch(batch, decide)
    # Purge and drain what the batch did before the merges run: if a merge fails, RQ's retry
    # finds these events applied already (duplicates) and would not do it again.
    _after_apply(connection, config, result.erased, result.actions)
    _forward_erasures(connection, config, batch, source)
    if ops:
        # Merges after the events: they fold in what this batch said about the merged records.
        merges = hubspot_ops.apply_store_ops(ops, store, decide, make_queue(connection, config.queue_name))
        _after_apply(connection, config, merges.erased, merges.actions)
    job = get_current_job()
    record_batch(
        connection,
        result.new_decisions,
        ((source, e.type.value) for e in batch),
        job.enqueued_at.timestamp() if job is not None and job.enqueued_at else None,
        # The event-age gauge watches the webhooks: a backfill's months-old events, or Pruner's
        # own records (a task created, an upgrade), would only hide how late a webhook is.
        None if source in HISTORY_SOURCES else max((e.occurred_ms for e in batch), default=None),
        result.paths,
        result.retention,
    )
    log.info(
        "batch applied source=%s events=%d leads=%d added=%d duplicates=%d actions=%d erased=%d dropped=%d",
        source, received, len(result.leads), result.added, result.duplicates, len(result.actions),
        len(result.erased), result.dropped,
    )  # fmt: skip
    return {"events": received, "added": result.added, "duplicates": result.duplicates}


def run_sweep(connection: redis.Redis, config: Config, now_ms: int) -> dict[str, int]:
    """Re-evaluate every lead whose next due time is at or before `now_ms`."""
    store = store_for(connection, config)
    # One sweep at a time: two would do the same work twice (correctly, thanks to WATCH).
    token = uuid.uuid4().hex
    if not connection.set(SWEEP_LOCK, token, nx=True, px=10 * 60 * 1000):
        log.info("sweep skipped: another sweep holds the lock")
        return {"due": 0, "skipped": 1}
    try:
        decide = decider(config, now_ms)
        evaluated = actions = 0
        seen: set[tuple[str, str]] = set()
        while True:
            due = [lead for lead in store.due(now_ms, SWEEP_CHUNK) if lead not in seen]
            if not due:
                break
            seen.update(due)
            result = store.reevaluate(due, decide)
            evaluated += len(due)
            actions += len(result.actions)
            request_drains(connection, config, result.actions)
            record_batch(connection, result.new_decisions, (), None, None, result.paths, result.retention)
        log.info("sweep done due=%d actions=%d", evaluated, actions)
        return {"due": evaluated, "actions": actions}
    finally:
        # Only our own lock: a sweep that outran the lock's 10 minutes must not release the next sweep's.
        release(connection, SWEEP_LOCK, token)


def preview_sweep(
    connection: redis.Redis, config: Config, now_ms: int
) -> list[tuple[tuple[str, str], list[tuple[str, str, str | None]], int]]:
    """Say what a sweep at `now_ms` would decide for each due lead, writing nothing."""
    store = store_for(connection, config)
    decide = decider(config, now_ms)
    due = store.due(now_ms, SWEEP_PREVIEW_LIMIT)
    return [(lead, outcome.new_decisions, len(outcome.actions)) for lead, outcome in store.preview(due, decide)]


def sweep(now_ms: int | None = None) -> dict[str, int]:
    """RQ job: run the time-based sweep (the clock enqueues it every minute)."""
    return run_sweep(_connection(), _config(), now_ms if now_ms is not None else int(time.time() * 1000))


def _after_apply(connection: redis.Redis, config: Config, erased: list[tuple[str, str]], actions: list[Action]) -> None:
    if erased:
        # The lead is gone from the store; now from every other job payload and the outbox.
        purge_payloads(connection, erased, config.queue_name)
    request_drains(connection, config, actions)


def _forward_erasures(connection: redis.Redis, config: Config, batch: list[Event], source: str) -> None:
    """Queue the batch's erasures for the lead's CRM when PRUNER_FORWARD_ERASURE is on (worker/actions.py).

    Only erasures that came from another channel: one the CRM itself sent (a HubSpot
    privacyDeletion, a Salesforce Individual's ShouldForget) is never sent back to it. Read
    from the batch, not from what this run erased: a job retried after a crash finds its
    events applied already, and must still forward (once: the outbox entry is queued once).
    """
    if not config.forward_erasure:
        return
    wanted = [
        (e.crm.value, e.lead_id, format_ms(e.occurred_ms))
        for e in batch
        if e.type is EventType.ERASURE_REQUESTED and e.crm.value != source
    ]
    key = suppression_key(config)
    if not wanted or key is None:  # no key: the erasure itself failed loudly before this
        return
    if config.dry_run:
        log.info("dry run: %d erasures not forwarded to the CRM", len(wanted))
        return
    request_drains(connection, config, queue_erasure_forwards(connection, key, wanted, source))


def request_drains(connection: redis.Redis, config: Config, actions: list[Action]) -> None:
    """Enqueue one outbox drain per CRM that got live actions (at most one pending per CRM).

    A dry run's actions go nowhere, but mark the store: live workers act on them for real once
    they run (worker/upgrades.py, and the watchdog for dry-run workers outliving a go-live).
    """
    if config.dry_run and actions:
        note_dry_run(connection)
    for crm in sorted({a["crm"] for a in actions if not a.get("dry_run")}):
        # The mark says "a drain is queued for what is in the outbox now"; a drain deletes it as
        # it reads. Its expiry bounds how long a lost drain job can hold new ones back.
        if connection.set(pending_key(crm), "1", nx=True, ex=PENDING_TTL_S):
            _enqueue_drain(connection, config, crm)


PENDING_TTL_S = 60


def _enqueue_drain(connection: redis.Redis, config: Config, crm: str) -> None:
    make_queue(connection, config.queue_name).enqueue(
        "worker.jobs.drain_outbox",
        args=(crm,),
        result_ttl=0,
        retry=RETRY,
        job_timeout=JOB_TIMEOUT * 5,
        description=f"drain_outbox: {crm}",
    )


def drain_outbox(crm: str) -> dict[str, int]:
    """RQ job: execute the CRM's pending actions (worker/actions.py)."""
    config = _config()
    connection = _connection()
    queue = make_queue(connection, config.queue_name)
    counts = drain(
        connection,
        crm,
        lambda: executor_for(crm, config, connection),
        queue_events=lambda events: events_job(queue, events, source=OUTBOX_SOURCE),
        cap=TaskCap(connection, crm, cached_policy(config.policy_path).max_tasks_per_owner_per_day, time.time),
    )
    if counts.get("again"):
        # Gave up waiting for a busy lock, or used its time: a fresh drain, queued now (not
        # with enqueue_in, which needs RQ's scheduler, and that dies with its worker).
        _enqueue_drain(connection, config, crm)
    return counts


def watchdog() -> dict[str, int]:
    """RQ job (the clock, every 15 s): recover what dead workers left behind.

    Started jobs whose worker stopped beating, and jobs a dying worker had taken but not
    started, are requeued (worker/reaper.py); tasks a daily budget held back are released on
    their day (worker/taskcap.py); and a drain is queued for any outbox nobody drains (a drain
    that died: its lock expires within seconds), without waiting for RQ's slow abandoned-job
    detection or its scheduler.
    """
    connection = _connection()
    config = _config()
    queue = make_queue(connection, config.queue_name)
    reaped = reap(connection, queue) + rescue(connection, queue)
    # Tasks held back by an owner's daily budget go back to the outbox once their day comes.
    released = sum(release_due(connection, crm.value, time.time()) for crm in Crm)
    # Dry-run workers still deciding after the live ones started (a rolling deploy): theirs too.
    held = 0 if config.dry_run else release_after_dry_run(connection, int(time.time() * 1000))
    idle = watch(connection, [crm.value for crm in Crm])
    for crm in idle:
        connection.set(pending_key(crm), "1", ex=PENDING_TTL_S)
        _enqueue_drain(connection, config, crm)
    if idle:
        log.info("watchdog queued drains for %s", ",".join(idle))
    return {"drains": len(idle), "reaped": len(reaped), "released": released, "held_released": held}


def forget_lead(crm: str, lead_id: str) -> dict[str, int]:
    """RQ job: drop a lead deleted in the CRM (state, history, due time, pending actions)."""
    connection = _connection()
    config = _config()
    existed = store_for(connection, config).forget(crm, lead_id)
    purge_payloads(connection, [(crm, lead_id)], config.queue_name)
    return {"forgotten": int(existed)}


STATS_LOCK = "pruner:stats:lock"
RECONCILE_LOCK = "pruner:reconcile:lock"


def reconcile() -> dict[str, int]:
    """RQ job (the clock, every PRUNER_RECONCILE_MINUTES): read back what the CRMs changed lately.

    worker/reconcile.py: HubSpot's contacts, deals and engagements, Salesforce's records, for each CRM configured.
    One run at a time; it takes the backfill's share of the rate limit, so callbacks keep theirs.
    """
    config = _config()
    connection = _connection()
    crms = [
        crm
        for crm, on in (("hubspot", config.hubspot_access_token), ("salesforce", config.salesforce_instance_url))
        if on
    ]
    if not crms:
        return {"skipped": 1}
    token = uuid.uuid4().hex
    if not connection.set(RECONCILE_LOCK, token, nx=True, ex=max(60, config.reconcile_minutes * 60)):
        return {"skipped": 1}
    try:
        records = recovered = 0
        for crm in crms:
            now_ms = int(time.time() * 1000)
            store = store_for(connection, config)
            decide = decider(config, now_ms, RECONCILE_SOURCE)
            if crm == "hubspot":
                with build_client(config, connection, config.backfill_rate_share) as client:
                    history = HubSpotHistory(client, search_limiter(connection, config.hubspot_search_rate_limit))
                    mapping = cached_policy(config.policy_path).hubspot
                    result = reconcile_hubspot(connection, history, store, decide, mapping, now_ms)
            else:
                with build_salesforce_client(config, connection, config.backfill_rate_share) as sf_client:
                    sf_history = SalesforceHistory(sf_client)
                    mapping_sf = config.salesforce_mapping
                    result = reconcile_salesforce(connection, sf_history, store, decide, mapping_sf, now_ms)
            _after_apply(connection, config, result.erased, result.actions)
            records += result.records
            recovered += sum(result.added.values())
        return {"records": records, "recovered": recovered}
    finally:
        release(connection, RECONCILE_LOCK, token)


STATS_INTERVAL_SECONDS = 300


def refresh_stats() -> dict[str, int]:
    """RQ job: refresh the dashboard's stats snapshot (the clock enqueues it every 5 minutes)."""
    connection = _connection()
    # A SCAN over every lead can outlast the interval on big installs: never run two at once.
    if not connection.set(STATS_LOCK, "1", nx=True, ex=STATS_INTERVAL_SECONDS * 2):
        return {"skipped": 1}
    try:
        # A store written before the list index, or indexed by an earlier version (when no
        # worker has done it yet: this job scans every lead anyway).
        reindex.ensure_index(connection)
        migrated = 0
        if not connection.exists(COMPLETE_KEY):
            # Once, after the upgrade: count the leads written before the aggregates in them.
            config = _config()
            store = store_for(connection, config)
            decide = decider(config, int(time.time() * 1000), source="migration")
            migrated = migrate(connection, lambda leads: store.reevaluate(leads, decide))
        done = {"leads": int(store_stats_snapshot(connection)["stats"]["leads"])}
        return {**done, "migrated": migrated} if migrated else done
    finally:
        connection.delete(STATS_LOCK)
