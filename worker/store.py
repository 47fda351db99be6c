"""The Redis lead store: a packed event log and a small state record per lead.

Keys (all prefixed `pruner:`):

    lead:{crm}:{lead_id}    the lead's event log (worker/eventlog.py), ~12 B per event
    state:{crm}:{lead_id}   JSON: state, loss reason, decisions, acted decision keys, as-of time
                            (absent while a lead is ACTIVE with no decisions: most leads)
    ck:{crm}:{lead_id}      the replay's checkpoint (worker/checkpoint.py): a batch of events
                            dated after it continues from it instead of replaying the log
    due                     sorted set {crm}:{lead_id} -> next time a time-based rule may fire
    actions                 list of CRM actions decided, newest last (a bounded record, dry runs too;
                            compact entries, worker/actionrecord.py)
    outbox:{crm}            JSON CRM actions still to execute (drained by worker/actions.py)
    merged:{crm}            hash: id of a record merged away in the CRM -> the id it was merged into
    suppressed              set of keyed hashes of erased leads and their emails (worker/suppression.py)
    erasures                list of JSON erasure audit records (hashes, time, source; no personal data)

A batch is applied in a handful of round trips whatever its size: WATCH the
merged-id hash and look the batch's ids up in it (records merged away in the CRM),
WATCH the touched leads' keys, screen them against the suppression set (where a key
is configured), MGET their checkpoints and states, then MULTI/APPEND/SET/ZADD/RPUSH/EXEC.
A lead's log is only read when its batch holds an event dated at or before its
checkpoint (a late event), when it has no checkpoint yet (a store written before
checkpoints: it is read and checkpointed on first touch), or when the checkpoint
cannot be continued (another policy). When another worker (or the sweep) changed one
of those leads in between, EXEC fails and the batch is re-read and re-decided —
nothing is lost, nothing counted or acted on twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from rules.counters import LoggedEvent
from rules.events import Event, EventType, mend_text
from worker import actionrecord, aggregates, eventlog, identity, leadindex, probe, reindex, staterecord, suppression
from worker.action import Action
from worker.checkpoint import Stored, unpack
from worker.eventlog import Fold, Log
from worker.keys import (
    ACTIONS_KEY,
    DUE_KEY,
    Lead,
    checkpoint_key,
    forgotten_key,
    lead_key,
    merged_key,
    parse_due_member,
    state_key,
)
from worker.leadview import BatchResult, Decide, LeadUpdate, LeadView, Outcome
from worker.staterecord import StateRecord
from worker.suppression import SUPPRESSED_KEY, lead_hash
from worker.transaction import Writes, optimistic, queue_erasure, queue_outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Read:
    """What a transaction read of one lead: its state, and its checkpoint or its log."""

    raw_state: bytes | None
    raw_checkpoint: bytes | None
    # The log's bytes when it was read (`log` is not None).
    raw_log: bytes | None
    checkpoint: Stored | None
    # The whole log, when it had to be read (no checkpoint, or events dated before it).
    log: list[LoggedEvent] | None
    # Dedup keys: of the log when read, else of the checkpoint's tail.
    present: set[bytes]
    log_exists: bool
    # What is left of the log's events past the retention horizon, when the log was read.
    fold: Fold | None = None
    # The format of the log's records, which appended ones must share (eventlog.record_format).
    records: int = eventlog.RECORDS_12

    @property
    def signature(self) -> tuple[Any, ...]:
        """Everything read of the lead: equal signatures, equal decisions."""
        return (self.raw_state, self.raw_checkpoint, self.log is not None, self.raw_log)


class LeadStore:
    """Per-lead event logs and states in Redis (connection passed in)."""

    def __init__(self, connection: redis.Redis, suppression_key: bytes | None = None) -> None:
        self.redis = connection
        self.suppression_key = suppression_key

    def apply_batch(self, events: Iterable[Event], decide: Decide | None = None) -> BatchResult:
        """Add events to their leads' logs, once each, and persist `decide`'s outcome, atomically."""
        fresh: dict[Lead, dict[bytes, LoggedEvent]] = {}
        received: dict[Lead, int] = {}
        for event in events:
            lead = (event.crm.value, event.lead_id)
            # (text a CRM's API gave unchecked: an unpaired surrogate would fail the whole batch)
            logged = eventlog.to_logged(mend_text(event))
            fresh.setdefault(lead, {}).setdefault(logged.key, logged)
            received[lead] = received.get(lead, 0) + 1
        return self._transact(fresh, received, decide, screen=decide is not None)

    def reevaluate(self, leads: Iterable[Lead], decide: Decide) -> BatchResult:
        """Re-decide leads without new events (the time-based sweep)."""
        return self._transact({lead: {} for lead in leads}, {}, decide)

    def _transact(
        self,
        batch: dict[Lead, dict[bytes, LoggedEvent]],
        received: dict[Lead, int],
        decide: Decide | None,
        screen: bool = False,
    ) -> BatchResult:
        if not batch:
            return BatchResult([], 0)
        screening = screen and self.suppression_key is not None
        # An erasure committed by another worker between a screen and EXEC would otherwise let
        # this batch re-create the erased lead: so the screen runs inside the optimistic
        # transaction, and the suppression set is watched with the leads' keys (erasures are
        # rare, so the retries this costs are too). Merges likewise: the merged-id hashes are
        # watched, and events for a record merged away go to the record it was merged into.
        watched = [SUPPRESSED_KEY] if screening else []
        alias_keys = sorted({merged_key(crm) for crm, _ in batch}) if screen else []
        asked_erasure = screen and any(
            ev.type is EventType.ERASURE_REQUESTED for events in batch.values() for ev in events.values()
        )
        # After a conflict the batch is read again, but a lead whose data read the same as
        # before keeps its decision: a conflict on one lead re-decides that lead, not the batch.
        memo: dict[Lead, tuple[tuple[Any, ...], list[LoggedEvent], list[LoggedEvent], Outcome | None, int]] = {}
        past: dict[Lead, int] = {}
        conflicts = redecided = 0

        def apply_once(pipe: Pipeline) -> BatchResult:
            nonlocal redecided
            if alias_keys:
                pipe.watch(*alias_keys)
                resolved, counts, aliases = self._resolve(pipe, batch, received, asked_erasure)
            else:
                resolved, counts, aliases = batch, received, {}
            leads = list(resolved)
            pipe.watch(*self._keys(leads, decide is not None), *watched)
            fresh, dropped, listed = (
                suppression.screen(pipe, self.suppression_key, resolved) if screening else (resolved, 0, {})
            )
            leads = [lead for lead in leads if lead in fresh]
            if not leads:
                return BatchResult([], dropped)
            reads = self._read(pipe, leads, fresh, decide is not None)
            forgotten = self._forgotten(pipe, fresh) if asked_erasure else {}
            # The list index moves with the state record (worker/leadindex.py).
            indexed = leadindex.read(pipe, leads) if decide is not None else []
            created = 0  # leads whose log this batch creates, less those it erases
            updates = []
            decided: list[tuple[Lead, _Read, list[LoggedEvent], Outcome | None, Any]] = []
            # Each lead's log, read at most once per attempt (by the decider or the list index).
            loaders: dict[Lead, Callable[[], Log]] = {}
            for i, (lead, read) in enumerate(zip(leads, reads, strict=True)):
                sig = (
                    read.signature,
                    lead in listed,
                    listed.get(lead),
                    tuple(fresh[lead]),
                    forgotten.get(lead),
                )
                if lead in memo and memo[lead][0] == sig:
                    _, history, new, outcome, past[lead] = memo[lead]
                else:
                    redecided += lead in memo
                    new = [ev for k, ev in fresh[lead].items() if k not in read.present]
                    past[lead] = 0  # (not what an earlier attempt of this transaction found)
                    if read.fold is not None:
                        new, past[lead] = eventlog.past_horizon(new, read.fold.at_ms)
                    stored = read.checkpoint
                    if stored is not None and any(ev.occurred_ms <= stored.at_ms for ev in new):
                        stored = None  # a late event: the replay starts over from the log
                    if stored is not None:
                        history = stored.events_after() + new
                    else:
                        history = (read.log or []) + new
                    outcome = None
                    if decide is not None and (new or read.raw_state is not None or past.get(lead, 0)):
                        prev = staterecord.decode_or_none(read.raw_state)
                        view = LeadView(
                            *lead,
                            history,
                            prev,
                            len(new),
                            lead in listed,
                            listed.get(lead, ()),
                            stored,
                            loaders.setdefault(lead, self._loader(pipe, lead, new, read)),
                            read.fold,
                        )
                        outcome = decide(view)
                    memo[lead] = (sig, history, new, outcome, past.get(lead, 0))
                entry = None
                if outcome is not None and not outcome.erase:
                    ck = read.checkpoint
                    # `history` is only the checkpoint's tail and this batch when it was continued.
                    partial = ck is not None and all(ev.occurred_ms > ck.at_ms for ev in new)
                    load = loaders.setdefault(lead, self._loader(pipe, lead, new, read))
                    entry = self._index_entry(read, indexed[i], history, new, outcome, partial, load)
                decided.append((lead, read, new, outcome, entry))
                dups = counts.get(lead, 0) - len(new) - past.get(lead, 0)
                merged_in = tuple(aliases.get(lead, ())) if outcome is not None and outcome.erase else ()
                updates.append(
                    LeadUpdate(lead[0], lead[1], history, len(new), dups, outcome, merged_in, past.get(lead, 0))
                )
            pipe.multi()
            writes = Writes()
            for i, (lead, read, new, outcome, entry) in enumerate(decided):
                old_row = read.checkpoint.row if read.checkpoint is not None else None
                if outcome is not None and outcome.erase:
                    queue_erasure(
                        pipe, self.suppression_key, lead, outcome, aliases.get(lead, []), forgotten.get(lead, [])
                    )
                    aggregates.queue_delta(writes, old_row, None)
                    leadindex.queue_update(writes, lead, indexed[i], None)
                    created -= read.log_exists
                    continue
                if outcome is not None and outcome.log is not None:
                    # The decider folded the log's oldest events away: the log is rewritten whole.
                    writes.sets[lead_key(*lead)] = outcome.log
                    created += not read.log_exists
                elif new:
                    # APPEND: the log is never read back for a live batch.
                    records = eventlog.encode(new, read.records)
                    writes.append(lead_key(*lead), records if read.log_exists else eventlog.VERSION + records)
                    created += not read.log_exists
                if outcome is not None:
                    queue_outcome(pipe, lead, outcome, read.raw_state is not None, writes, read.raw_state)
                    aggregates.queue_delta(writes, old_row, outcome.row if outcome.checkpoint else None)
                    leadindex.queue_update(writes, lead, indexed[i], entry)
                elif new:
                    # No decider: the checkpoint would miss these events (and its row goes with it).
                    pipe.delete(checkpoint_key(*lead))
                    aggregates.queue_delta(writes, old_row, None)
            leadindex.queue_tracked(pipe, created)
            writes.flush(pipe)
            pipe.execute()
            return BatchResult(updates, dropped, conflicts, redecided)

        def conflicted() -> None:
            nonlocal conflicts
            conflicts += 1

        return optimistic(self.redis, f"on {len(batch)} leads", apply_once, conflicted)

    @staticmethod
    def _index_entry(
        read: _Read,
        old: Any,
        history: list[LoggedEvent],
        new: list[LoggedEvent],
        outcome: Outcome,
        partial: bool,
        load: Callable[[], Log],
    ) -> Any:
        """The lead's list-index entry after this outcome (worker/leadindex.py).

        The profile (source, deal stage, segment, priority) is the evaluation's, which counted
        every event of the lead (`Outcome.profile`). The whole log is read only for the one thing
        a batch that continued the checkpoint does not hold: the time of the lead's oldest event,
        the "changed" time of a lead listed for the first time without a decision (a won deal).
        Until 2026-12-06 the log was read, one GET each, for every lead listed for the first time
        and every profile event of a listed lead, to fold its profile again.
        """
        if outcome.unchanged and old is not None and not any(ev.type in leadindex.PROFILE_TYPES for ev in new):
            return old  # the same state record and no profile event: the same entry
        listed_now = outcome.state is not None or old is not None
        listed_now = listed_now or any(ev.type is EventType.DEAL_UPDATED for ev in new)
        if outcome.profile is not None:
            whole_needed = old is None and not (outcome.state or {}).get("decisions")
        else:
            whole_needed = old is None or any(ev.type in leadindex.PROFILE_TYPES for ev in new)
        folded = read.fold
        if partial and listed_now and whole_needed:
            whole = load()
            history, folded = whole.events, whole.fold
        start = folded.state().counters if folded is not None else None
        return leadindex.entry_for(outcome.state, history, old, new, start, outcome.profile)

    @staticmethod
    def _keys(leads: list[Lead], deciding: bool) -> list[str]:
        keys = [lead_key(*lead) for lead in leads]
        if deciding:
            keys += [state_key(*lead) for lead in leads] + [checkpoint_key(*lead) for lead in leads]
        return keys

    @staticmethod
    def _read(pipe: Any, leads: list[Lead], fresh: dict[Lead, dict[bytes, LoggedEvent]], deciding: bool) -> list[_Read]:
        """Read what deciding the batch needs: checkpoints and states; logs only where needed.

        A lead's log is read when it has no usable checkpoint (new, or written before
        checkpoints, or by another format) or when the batch holds an event dated at or
        before its checkpoint (a late event: the replay starts over from the log).
        """
        n = len(leads)
        if deciding:
            values: list[bytes | None] = pipe.mget(
                [state_key(*lead) for lead in leads] + [checkpoint_key(*lead) for lead in leads]
            )
            states, raw_cks = values[:n], values[n:]
            stored = [unpack(v) for v in raw_cks]
        else:
            states, raw_cks, stored = [None] * n, [None] * n, [None] * n
        reads: list[_Read | None] = []
        late = []
        live = [
            i
            for i, ck in enumerate(stored)
            if ck is not None and all(ev.occurred_ms > ck.at_ms for ev in fresh[leads[i]].values())
        ]
        # Redeliveries of live leads' events are looked for in Redis (worker/probe.py).
        probed = probe.clean(pipe, [lead_key(*leads[i]) for i in live], [b"".join(fresh[leads[i]]) for i in live])
        clean = dict(zip(live, probed, strict=True))
        for i in range(n):
            ck, found = stored[i], clean.get(i)
            if ck is not None and found is not None:
                records, exists = found
                reads.append(_Read(states[i], raw_cks[i], None, ck, None, set(), exists, None, records))
            else:
                reads.append(None)
                late.append(i)
        if late:
            blobs: list[bytes | None] = pipe.mget([lead_key(*leads[i]) for i in late])
            for i, blob in zip(late, blobs, strict=True):
                whole = eventlog.read(blob)
                # The checkpoint stays usable if the old events turn out to be redeliveries.
                keys = {ev.key for ev in whole.events}
                reads[i] = _Read(
                    states[i],
                    raw_cks[i],
                    blob,
                    stored[i],
                    whole.events,
                    keys,
                    bool(blob),  # (an empty value is no log: appends start it with its version byte)
                    whole.fold,
                    eventlog.record_format(blob),
                )
        return [r for r in reads if r is not None]

    @staticmethod
    def _loader(pipe: Any, lead: Lead, new: list[LoggedEvent], read: _Read) -> Callable[[], Log]:
        """Read a lead's whole log (watched already), with this batch's new events; once, however often called."""
        loaded: list[Log] = []

        def load() -> Log:
            if not loaded:
                whole = Log(read.fold, read.log) if read.log is not None else eventlog.read(pipe.get(lead_key(*lead)))
                loaded.append(Log(whole.fold, whole.events + new))
            return loaded[0]

        return load

    def _resolve(
        self,
        conn: Any,
        batch: dict[Lead, dict[bytes, LoggedEvent]],
        received: dict[Lead, int],
        with_aliases: bool,
    ) -> tuple[dict[Lead, dict[bytes, LoggedEvent]], dict[Lead, int], dict[Lead, list[str]]]:
        """Send events for records merged away in the CRM to the record they were merged into.

        Returns the batch and received counts re-keyed, and (when `with_aliases`, for an
        erasure) each lead's merged-away ids, so the erasure can cover them too.
        """
        leads = list(batch)
        by_crm: dict[str, list[str]] = {}
        for crm, lead_id in leads:
            by_crm.setdefault(crm, []).append(lead_id)
        target: dict[Lead, Lead] = {}
        aliases: dict[Lead, list[str]] = {}
        for crm, ids in by_crm.items():
            if with_aliases:
                # An erasure is rare: read the whole (small) hash to find ids merged into its lead.
                raw: dict[bytes, bytes] = conn.hgetall(merged_key(crm))
                table = {k.decode(): v.decode() for k, v in raw.items()}
                for merged, into in table.items():
                    aliases.setdefault((crm, into), []).append(merged)
                found = [table.get(i) for i in ids]
            else:
                found = [v.decode() if v else None for v in conn.hmget(merged_key(crm), ids)]
            target.update({(crm, i): (crm, into) for i, into in zip(ids, found, strict=True) if into})
        if not target:
            return batch, received, aliases
        resolved: dict[Lead, dict[bytes, LoggedEvent]] = {}
        counts: dict[Lead, int] = {}
        for lead in leads:
            survivor = target.get(lead, lead)
            resolved.setdefault(survivor, {}).update(batch[lead])
            counts[survivor] = counts.get(survivor, 0) + received.get(lead, 0)
        return resolved, counts, aliases

    def _forgotten(self, conn: Any, fresh: dict[Lead, dict[bytes, LoggedEvent]]) -> dict[Lead, list[str]]:
        """Email hashes kept from an earlier forget of the leads this batch asks to erase."""

        key = self.suppression_key
        if key is None:
            return {}
        out: dict[Lead, list[str]] = {}
        for lead, events in fresh.items():
            if any(e.type is EventType.ERASURE_REQUESTED for e in events.values()):
                kept = conn.smembers(forgotten_key(lead_hash(key, *lead)))
                out[lead] = sorted(h.decode() for h in kept)
        return out

    def merge(self, crm: str, into: str, merged: list[str], decide: Decide) -> LeadUpdate | None:
        """Fold the merged leads into `into` (a CRM merge) and re-decide it: worker/identity.py."""
        return identity.merge(self.redis, self.suppression_key, crm, into, merged, decide)

    def forget(self, crm: str, lead_id: str) -> bool:
        """Delete everything held about a lead deleted in the CRM (not a suppression): worker/identity.py."""
        return identity.forget(self.redis, self.suppression_key, crm, lead_id)

    def reindex(self, batch: int = 500) -> int:
        """Write the list index entry of every stored lead (a store from before the index): worker/reindex.py."""
        return reindex.reindex(self.redis, batch)

    def history(self, crm: str, lead_id: str) -> list[LoggedEvent] | None:
        """Return the events a lead's log keeps, or None when the lead is unknown."""
        whole = self.log(crm, lead_id)
        return None if whole is None else whole.events

    def log(self, crm: str, lead_id: str) -> Log | None:
        """Return a lead's whole log (its fold and kept events), or None when the lead is unknown."""
        blob: bytes | None = self.redis.get(lead_key(crm, lead_id))  # type: ignore[assignment]
        return None if blob is None else eventlog.read(blob)

    def checkpoint(self, crm: str, lead_id: str) -> Stored | None:
        """Return a lead's checkpoint (None: unknown lead, or not evaluated since the upgrade)."""
        raw: bytes | None = self.redis.get(checkpoint_key(crm, lead_id))  # type: ignore[assignment]
        return unpack(raw)

    def state(self, crm: str, lead_id: str) -> StateRecord | None:
        """Return a lead's stored state record (None: ACTIVE without decisions, or unknown)."""
        raw = self.redis.get(state_key(crm, lead_id))
        return staterecord.decode_or_none(raw)

    def preview(self, leads: Iterable[Lead], decide: Decide) -> list[tuple[Lead, Outcome]]:
        """Say what `decide` would make of each lead, writing nothing (a sweep's dry run)."""
        out = []
        for crm, lead_id in leads:
            whole = self.log(crm, lead_id) or Log(None, [])
            view = LeadView(crm, lead_id, whole.events, self.state(crm, lead_id), 0, fold=whole.fold)
            out.append(((crm, lead_id), decide(view)))
        return out

    def due(self, now_ms: int, limit: int) -> list[Lead]:
        """Return up to `limit` leads whose next due time is at or before `now_ms`."""
        members: list[bytes] = self.redis.zrangebyscore(DUE_KEY, "-inf", now_ms, start=0, num=limit)  # type: ignore[assignment]
        return [parse_due_member(m) for m in members]

    def actions(self, start: int = 0, end: int = -1) -> list[Action]:
        """Return recorded CRM actions (the outbox), oldest first."""
        raw: list[bytes] = self.redis.lrange(ACTIONS_KEY, start, end)  # type: ignore[assignment]
        return [actionrecord.decode(a) for a in raw]
