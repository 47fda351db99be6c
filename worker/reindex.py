"""Rebuilding the list index of a store written before it, or before its present shape
(`pruner leads --backfill`, the first worker's start, the stats job).

Apart from worker/store.py, which only delegates here: it reads every lead's log and state
once, which the batch path never does.
"""

from __future__ import annotations

import redis
from redis.client import Pipeline

from worker import eventlog, leadindex, staterecord
from worker.keys import PREFIX, lead_key, parse_due_member, state_key
from worker.transaction import optimistic

# One process builds the index at a time (the first worker to start, the stats job, `--backfill`).
REINDEX_LOCK = "pruner:leads:reindex-lock"


def ensure_index(connection: redis.Redis, force: bool = False) -> int | None:
    """Index every stored lead if the index is incomplete, or an earlier version's is there (or `force`).

    Returns how many leads were indexed; None when there was nothing to do, or another process
    holds the lock (it is doing it). An earlier version's index (issue #13: a set for every
    lead, per outcome, per rule) is deleted first, and so is anything of this version's index
    (written before a rollback, it may be stale): the store is then indexed anew from its logs
    and state records, and `is_complete` says no until that is done.
    """
    legacy = _legacy(connection)
    if not (force or legacy or not leadindex.is_complete(connection)):
        return None
    if not connection.set(REINDEX_LOCK, "1", nx=True, ex=3600):
        return None
    try:
        if legacy:
            drop_index(connection)
        return reindex(connection)
    finally:
        connection.delete(REINDEX_LOCK)


def _legacy(connection: redis.Redis) -> bool:
    return bool(connection.exists(leadindex.LEGACY_INDEXED_KEY, leadindex.LEGACY_ENTRIES_KEY))


def drop_index(connection: redis.Redis, scan_count: int = 1000) -> int:
    """Delete the list index, this version's and the earlier one's (not the count of leads); return how many keys.

    The earlier version's marker goes last: a process stopped half-way leaves it, and the next
    start does this again.
    """
    connection.delete(leadindex.INDEXED_KEY)
    dropped = 0
    for pattern in (leadindex.PREFIX + "*", *leadindex.LEGACY_PATTERNS):
        batch: list[bytes] = []
        for key in connection.scan_iter(match=pattern, count=scan_count):
            batch.append(key)
            if len(batch) >= 500:
                dropped += int(connection.unlink(*batch))
                batch.clear()
        if batch:
            dropped += int(connection.unlink(*batch))
    dropped += int(connection.unlink(leadindex.LEGACY_ENTRIES_KEY))
    dropped += int(connection.delete(leadindex.LEGACY_INDEXED_KEY))
    return dropped


def reindex(connection: redis.Redis, batch: int = 500) -> int:
    """Write the list index entry of every stored lead (a store from before the index); return how many.

    Idempotent and safe beside live workers: each batch of leads is read and written in
    one optimistic transaction on their keys, like a batch of events. Marks the index
    complete at the end, so the dashboard and `GET /leads` trust it from then on.
    """
    done = 0
    names: list[bytes] = []

    def flush() -> None:
        nonlocal done
        leads = [parse_due_member(n[len(PREFIX) :]) for n in names]
        keys = [lead_key(*lead) for lead in leads] + [state_key(*lead) for lead in leads]

        def index_batch(pipe: Pipeline) -> None:
            pipe.watch(*keys)
            values: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
            old = leadindex.read(pipe, leads)
            pipe.multi()
            for i, lead in enumerate(leads):
                blob, raw_state = values[i], values[len(leads) + i]
                whole = eventlog.read(blob)
                state = staterecord.decode_or_none(raw_state)
                # The profile as the replay counts it (a new version of a record the fold counted
                # is past the horizon), which is what batches index (`Outcome.profile`).
                entry = leadindex.entry_for(state, whole.events, None, whole.events, profile=whole.counters().profile())
                leadindex.queue_update(pipe, lead, old[i], entry, rewrite=True)
                if entry is not None:
                    # A worker's batch on this lead read its entry before its MULTI (absent, say,
                    # the index having just been dropped) and would otherwise commit its move from
                    # that, leaving the membership written here behind. It watches the lead's log
                    # and state record: writing one back, unchanged, makes it retry on this entry.
                    if raw_state is not None:
                        pipe.set(state_key(*lead), raw_state)
                    elif blob is not None:
                        pipe.set(lead_key(*lead), blob)
            pipe.execute()

        optimistic(connection, f"indexing {len(leads)} leads", index_batch)
        done += len(leads)
        names.clear()

    for name in connection.scan_iter(f"{PREFIX}*", count=batch):
        names.append(name)
        if len(names) >= batch:
            flush()
    if names:
        flush()
    # The count of leads too (a store from before the index never kept it). A lead created
    # or deleted by a worker during the scan may be off by one here: this runs once.
    with connection.pipeline(transaction=True) as pipe:
        pipe.set(leadindex.TRACKED_KEY, done)
        pipe.set(leadindex.INDEXED_KEY, str(done))
        pipe.execute()
    return done
