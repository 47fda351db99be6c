"""Rebuilding the list index of a store written before it (`pruner reindex`, and the first worker's start).

Apart from worker/store.py, which only delegates here: it reads every lead's log and state
once, which the batch path never does.
"""

from __future__ import annotations

import redis
from redis.client import Pipeline

from worker import eventlog, leadindex, staterecord
from worker.keys import PREFIX, lead_key, parse_due_member, state_key
from worker.transaction import optimistic


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
                start = whole.fold.state().counters if whole.fold is not None else None
                entry = leadindex.entry_for(state, whole.events, None, whole.events, start)
                leadindex.queue_update(pipe, lead, old[i], entry)
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
