"""A lead's identity changing in the CRM: records merged into one, a record deleted.

Both are transactions on several leads' keys (worker/transaction.py), watched like a batch
of events so that an erasure committed meanwhile is never undone. `LeadStore.merge` and
`LeadStore.forget` are the way in.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline

from rules.counters import LoggedEvent
from rules.events import EventType
from rules.states import State
from worker import aggregates, eventlog, leadindex, staterecord
from worker.checkpoint import unpack
from worker.eventlog import Log
from worker.keys import (
    DUE_KEY,
    FORGOTTEN_TTL_S,
    checkpoint_key,
    due_member,
    forgotten_key,
    lead_key,
    merged_key,
    state_key,
)
from worker.leadview import Decide, LeadUpdate, LeadView, Outcome
from worker.suppression import SUPPRESSED_KEY, email_hash, lead_hash, objection_hashes
from worker.transaction import optimistic, queue_erasure, queue_outcome


def _rows(conn: Any, ck_keys: list[str]) -> list[list[str] | None]:
    """The aggregate rows (worker/aggregates.py) the checkpoints at `ck_keys` hold."""
    out: list[list[str] | None] = []
    for raw in conn.mget(ck_keys):
        stored = unpack(raw)
        out.append(stored.row if stored is not None else None)
    return out


def _carried(crm: str, merged: list[str], blobs: list[bytes | None], fold_at: int | None) -> list[LoggedEvent]:
    """The merged records' events for the survivor, with what a fold would lose carried over.

    The survivor's fold stays its fold: a merged record's own fold cannot be joined to it,
    and its kept events dated before the survivor's fold are past the horizon there. Their
    counts are lost to the merge; what must not be is carried as events dated just after the
    folds: an objection (a suppressed record's channels, or a `do_not_contact`), an erasure
    request, and every email address, which an erasure of the survivor must still find.
    """
    out: list[LoggedEvent] = []
    after = fold_at + 1 if fold_at is not None else None
    for lead, blob in zip(merged, blobs, strict=True):
        log = eventlog.read(blob)
        for ev in log.events:
            if after is None or ev.occurred_ms >= after:
                out.append(ev)
            elif ev.type in (EventType.DO_NOT_CONTACT, EventType.ERASURE_REQUESTED):
                out.append(ev._replace(occurred_ms=after))
        if log.fold is None and after is None:
            continue
        at = max(log.fold.at_ms if log.fold is not None else 0, after or 0)
        lost = [e for e in log.events if after is not None and e.occurred_ms < after]
        emails = (set(log.fold.emails) if log.fold is not None else set()) | Log(None, lost).emails()
        for email in sorted(emails):
            key = eventlog.event_key(crm, f"pruner-merge:{lead}:email:{email}")
            out.append(LoggedEvent(at, EventType.LEAD_PROFILE, key, {"email": email}))
        running = log.fold.state() if log.fold is not None else None
        if running is not None and running.state is State.SUPPRESSED:
            channels = sorted(running.dnc_channels) or ["all"]
            key = eventlog.event_key(crm, f"pruner-merge:{lead}:do_not_contact")
            out.append(LoggedEvent(at, EventType.DO_NOT_CONTACT, key, {"channels": channels}))
    return out


def merge(
    connection: redis.Redis, suppression_key: bytes | None, crm: str, into: str, merged: list[str], decide: Decide
) -> LeadUpdate | None:
    """Fold the merged leads' histories into `into` (a CRM merge) and re-decide it, atomically.

    None when there was nothing to merge. An update whose outcome erases means `into`
    and the merged leads are gone: the caller purges their queued payloads.
    """

    survivor = (crm, into)
    keys = [lead_key(crm, lead) for lead in [into, *merged]] + [state_key(crm, lead) for lead in [into, *merged]]
    ck_keys = [checkpoint_key(crm, lead) for lead in [into, *merged]]
    key = suppression_key

    def merge_once(pipe: Pipeline) -> LeadUpdate | None:
        # Watched and read in the transaction, as in apply_batch: an erasure
        # committing meanwhile must not be undone by the merge.
        pipe.watch(*keys, *ck_keys, merged_key(crm), *([SUPPRESSED_KEY] if key else []))
        ids = [into, *merged]
        indexed = dict(zip(ids, leadindex.read(pipe, [(crm, m) for m in ids]), strict=True))
        # Every lead of the merge leaves the aggregates; the survivor comes back in.
        rows = _rows(pipe, ck_keys)
        raw_aliases: dict[bytes, bytes] = pipe.hgetall(merged_key(crm))  # type: ignore[assignment]
        aliases = {k.decode(): v.decode() for k, v in raw_aliases.items()}
        # Ids merged earlier into one merged now: they follow it to the survivor.
        chained = [alias for alias, target in aliases.items() if target in merged]
        if key is not None and pipe.sismember(SUPPRESSED_KEY, lead_hash(key, crm, into)):
            # A merge delivered after the survivor's erasure: the merged records
            # are the same erased person, so they go too and nothing is re-created;
            # their ids are dropped from now on like the survivor's. The erasing
            # outcome tells the caller to purge their queued payloads.
            logs: list[bytes | None] = pipe.mget([lead_key(crm, m) for m in merged])  # type: ignore[assignment]
            emails = {e for blob in logs if blob is not None for e in eventlog.read(blob).emails()}
            pipe.multi()
            for lead in merged:
                pipe.delete(lead_key(crm, lead), state_key(crm, lead), checkpoint_key(crm, lead))
                pipe.zrem(DUE_KEY, due_member(crm, lead))
            for lead, entry in indexed.items():
                leadindex.queue_update(pipe, (crm, lead), entry, None)
            leadindex.queue_tracked(pipe, -sum(blob is not None for blob in logs))
            for row in rows[1:]:
                aggregates.queue_delta(pipe, row, None)
            away = (*merged, *chained)
            # As the erasure would have, had the merge come first: the merged ids and
            # the person's emails, recognised if they are imported again.
            outcome = Outcome(erase=True, suppress_hashes=[email_hash(key, e) for e in sorted(emails)])
            queue_erasure(pipe, key, survivor, outcome, away)
            pipe.execute()
            return LeadUpdate(crm, into, [], 0, 0, outcome, away)
        values: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
        blobs = values[: 1 + len(merged)]
        survivor_log = eventlog.read(blobs[0])
        fold = survivor_log.fold
        union: dict[bytes, LoggedEvent] = {ev.key: ev for ev in survivor_log.events}
        for ev in _carried(crm, merged, blobs[1:], fold.at_ms if fold is not None else None):
            union.setdefault(ev.key, ev)
        remap = {m: into for m in [*merged, *chained] if aliases.get(m) != into}
        if len(union) == len(survivor_log.events) and not any(blobs[1:]):
            # Nothing to fold (a redelivery, or records Pruner never saw): still
            # remember where their later events belong.
            if remap:
                pipe.multi()
                pipe.hset(merged_key(crm), mapping=remap)  # type: ignore[arg-type]
                pipe.execute()
            return None
        history = list(union.values())
        raw_state = values[1 + len(merged)]
        prev = staterecord.decode_or_none(raw_state)
        # A merged record recognised as an erased person (its email on the
        # suppression list) keeps the survivor suppressed: the flag lives in states.
        states = [staterecord.decode(s) for s in values[1 + len(merged) :] if s]
        listed = any(s.get("suppression_list") for s in states)
        # What a merged record was told (its acted decisions), the survivor was told
        # too: the CRM merged the records, and the same story re-told on the survivor
        # names the same decisions. The survivor's own come last (kept when trimmed).
        told = list(dict.fromkeys(a for s in states[1:] + states[:1] for a in s.get("acted", [])))
        if told:
            prev = {**(prev or {}), "acted": told}
        outcome = decide(LeadView(crm, into, history, prev, len(history), listed, fold=fold))
        pipe.multi()
        for lead in merged:
            pipe.delete(lead_key(crm, lead), state_key(crm, lead), checkpoint_key(crm, lead))
            pipe.zrem(DUE_KEY, due_member(crm, lead))
            leadindex.queue_update(pipe, (crm, lead), indexed[lead], None)
        # The merged logs go; the survivor's exists from now on, unless erased.
        leadindex.queue_tracked(pipe, (blobs[0] is None and not outcome.erase) - sum(1 for b in blobs[1:] if b))
        if outcome.erase and blobs[0] is not None:
            leadindex.queue_tracked(pipe, -1)
        for row in rows[1:]:
            aggregates.queue_delta(pipe, row, None)
        survivor_row = outcome.row if outcome.checkpoint is not None and not outcome.erase else None
        aggregates.queue_delta(pipe, rows[0], survivor_row)
        gone: tuple[str, ...] = ()
        if outcome.erase:
            merged_in = [a for a, target in aliases.items() if target == into]
            gone = tuple(dict.fromkeys([*merged, *chained, *merged_in]))
            queue_erasure(pipe, key, survivor, outcome, gone)
            leadindex.queue_update(pipe, survivor, indexed[into], None)
        else:
            pipe.set(lead_key(crm, into), outcome.log or eventlog.write(eventlog.Log(fold, history)))
            queue_outcome(pipe, survivor, outcome)
            start = fold.state().counters if fold is not None else None
            entry = leadindex.entry_for(outcome.state, history, None, history, start, outcome.profile)
            leadindex.queue_update(pipe, survivor, indexed[into], entry)
            if remap:
                pipe.hset(merged_key(crm), mapping=remap)  # type: ignore[arg-type]
        pipe.execute()
        return LeadUpdate(crm, into, history, len(history), 0, outcome, gone)

    return optimistic(connection, f"merging {len(merged)} leads", merge_once)


def forget(connection: redis.Redis, suppression_key: bytes | None, crm: str, lead_id: str) -> bool:
    """Delete everything held about a lead deleted in the CRM (not a suppression).

    A SUPPRESSED lead leaves a keyed hash of its id behind (where a suppression key is
    configured): a record restored in the CRM must not come back open to contact, since
    only an explicit re-consent ends a suppression. And for a few days, keyed hashes of
    its emails: HubSpot's privacyDeletion may arrive after the deletion was carried out,
    and the erasure must still recognise the person if they are imported again.
    """

    key = suppression_key

    def forget_one(pipe: Pipeline) -> bool:
        pipe.watch(state_key(crm, lead_id), merged_key(crm), lead_key(crm, lead_id), checkpoint_key(crm, lead_id))
        (row,) = _rows(pipe, [checkpoint_key(crm, lead_id)])
        blob = pipe.get(lead_key(crm, lead_id))
        emails = eventlog.read(blob).emails()  # type: ignore[arg-type]
        raw = pipe.get(state_key(crm, lead_id))
        state = staterecord.decode(raw) if raw is not None else {}
        [entry] = leadindex.read(pipe, [(crm, lead_id)])
        suppressed = state.get("state") == "SUPPRESSED"
        raw_table: dict[bytes, bytes] = pipe.hgetall(merged_key(crm))  # type: ignore[assignment]
        table = {k.decode(): v.decode() for k, v in raw_table.items()}
        # The record is gone from the CRM: so is any mapping that names it.
        naming = [alias for alias, into in table.items() if lead_id in (alias, into)]
        pipe.multi()
        pipe.delete(lead_key(crm, lead_id), state_key(crm, lead_id), checkpoint_key(crm, lead_id))
        pipe.zrem(DUE_KEY, due_member(crm, lead_id))
        leadindex.queue_update(pipe, (crm, lead_id), entry, None)
        leadindex.queue_tracked(pipe, -(blob is not None))
        aggregates.queue_delta(pipe, row, None)
        if naming:
            pipe.hdel(merged_key(crm), *naming)
        if suppressed and key is not None:
            pipe.sadd(SUPPRESSED_KEY, *objection_hashes(key, crm, lead_id, state))
        if emails and key is not None:
            forgotten = forgotten_key(lead_hash(key, crm, lead_id))
            pipe.sadd(forgotten, *(email_hash(key, e) for e in emails))
            pipe.expire(forgotten, FORGOTTEN_TTL_S)
        return bool(pipe.execute()[0])

    return optimistic(connection, "forgetting a lead", forget_one)
