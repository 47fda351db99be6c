"""The Redis lead store: a packed event log and a small state record per lead.

Keys (all prefixed `pruner:`):

    lead:{crm}:{lead_id}    the lead's event log (worker/eventlog.py), ~20 B per event
    state:{crm}:{lead_id}   JSON: state, loss reason, decisions, acted decision keys, as-of time
                            (absent while a lead is ACTIVE with no decisions: most leads)
    ck:{crm}:{lead_id}      the replay's checkpoint (worker/checkpoint.py): a batch of events
                            dated after it continues from it instead of replaying the log
    due                     sorted set {crm}:{lead_id} -> next time a time-based rule may fire
    actions                 list of JSON CRM actions decided, newest last (a bounded record, dry runs too)
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

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from rules.counters import LoggedEvent
from rules.events import Event, EventType
from rules.lifecycle import ALL_CHANNELS, covered_channels
from worker import aggregates, eventlog, leadindex
from worker.action import Action
from worker.checkpoint import Stored, unpack
from worker.errors import StoreError
from worker.staterecord import StateRecord
from worker.suppression import AUDIT_KEY, SUPPRESSED_KEY, email_hash, lead_hash, objection_hash

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "pruner:lead:"
STATE_PREFIX = "pruner:state:"
CHECKPOINT_PREFIX = "pruner:ck:"
DUE_KEY = "pruner:due"
ACTIONS_KEY = "pruner:actions"
OUTBOX_PREFIX = "pruner:outbox:"
MERGED_PREFIX = "pruner:merged:"
FORGOTTEN_PREFIX = "pruner:forgotten:"
# How long a deleted lead's email hashes wait for a privacyDeletion (HubSpot retries for a day).
FORGOTTEN_TTL_S = 3 * 86_400
ACTIONS_KEPT = 100_000


def outbox_key(crm: str) -> str:
    """Return the list of actions still to execute against one CRM."""
    return f"{OUTBOX_PREFIX}{crm}"


MAX_ATTEMPTS = 50
Lead = tuple[str, str]


def _without_email(ev: LoggedEvent) -> LoggedEvent:
    if "email" not in ev.data:
        return ev
    return ev._replace(data={k: v for k, v in ev.data.items() if k != "email"})


def lead_key(crm: str, lead_id: str) -> str:
    """Return the Redis key holding one lead's event log."""
    return f"{PREFIX}{crm}:{lead_id}"


def state_key(crm: str, lead_id: str) -> str:
    return f"{STATE_PREFIX}{crm}:{lead_id}"


def checkpoint_key(crm: str, lead_id: str) -> str:
    return f"{CHECKPOINT_PREFIX}{crm}:{lead_id}"


OBJECTION_CHANNELS = ("email", "phone")


def _objection_hashes(key: bytes, crm: str, lead_id: str, state: dict[str, Any]) -> list[str]:
    """Keyed hashes recording what a suppressed lead objected to: every channel, or some."""
    channels: set[str] = set()
    for decision in state.get("decisions", []):
        if decision.get("to") == "SUPPRESSED":
            channels |= covered_channels((decision.get("inputs") or {}).get("channels") or ["all"])
    if not channels or channels >= ALL_CHANNELS:
        return [objection_hash(key, crm, lead_id)]
    return [objection_hash(key, crm, lead_id, c) for c in sorted(channels)]


def _rows(conn: Any, ck_keys: list[str]) -> list[list[str] | None]:
    """The aggregate rows (worker/aggregates.py) the checkpoints at `ck_keys` hold."""
    out: list[list[str] | None] = []
    for raw in conn.mget(ck_keys):
        stored = unpack(raw)
        out.append(stored.row if stored is not None else None)
    return out


def forgotten_key(lead_hash: str) -> str:
    """Return the set of a forgotten lead's email hashes, kept for a late erasure."""
    return f"{FORGOTTEN_PREFIX}{lead_hash}"


def _emails(history: Iterable[LoggedEvent]) -> set[str]:
    return {ev.data["email"] for ev in history if ev.type is EventType.LEAD_PROFILE and ev.data.get("email")}


def merged_key(crm: str) -> str:
    """Return the hash of merged-away record ids -> the surviving record's id."""
    return f"{MERGED_PREFIX}{crm}"


def due_member(crm: str, lead_id: str) -> str:
    return f"{crm}:{lead_id}"


def parse_due_member(member: bytes | str) -> Lead:
    text = member.decode() if isinstance(member, bytes) else member
    crm, _, lead_id = text.partition(":")
    return crm, lead_id


def _no_more_history() -> list[LoggedEvent]:
    return []


@dataclass(frozen=True)
class LeadView:
    """What a decider sees of one lead inside the transaction.

    `history` is the whole event set when `checkpoint` is None; otherwise only the events
    dated after the checkpoint, and `earlier()` reads the rest (the whole set) should
    the decider find it cannot continue the checkpoint.
    """

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    state: StateRecord | None
    added: int
    # An email of this lead is on the suppression list (a re-created erased person).
    listed: bool = False
    # The channels a restored record objected to (empty: all of them).
    listed_channels: tuple[str, ...] = ()
    checkpoint: Stored | None = None
    everything: Callable[[], list[LoggedEvent]] = _no_more_history

    def full_history(self) -> list[LoggedEvent]:
        """The lead's whole event set (reads the log when only the tail is at hand)."""
        return self.history if self.checkpoint is None else self.everything()


@dataclass
class Outcome:
    """What a decider wants persisted for one lead."""

    state: StateRecord | None = None  # None: no state record (plain ACTIVE lead)
    due_ms: int | None = None
    actions: list[Action] = field(default_factory=list)
    # Decisions this evaluation added (rule, to, reason): aggregate metrics only.
    new_decisions: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Erasure: delete everything about the lead, keep these keyed hashes and one audit record.
    erase: bool = False
    suppress_hashes: list[str] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    # The new checkpoint (worker/checkpoint.py), and how the lead was evaluated:
    # "checkpoint" (continued), "replay" (the whole log) or "new" (no history before).
    checkpoint: bytes | None = None
    path: str | None = None
    # The lead's row in the aggregates, kept in `checkpoint` (None: not counted).
    row: list[str] | None = None


# What the store calls to decide a lead (worker.decide.Decider is the one the workers pass).
Decide = Callable[[LeadView], Outcome]


# For each log (KEYS[i]): 1 when one of the 8-byte dedup keys packed in ARGV[i] occurs in it.
_PROBE_KEYS = """
local out = {}
for i, key in ipairs(KEYS) do
  local blob = redis.call('GET', key)
  local found = 0
  if blob then
    local probes = ARGV[i]
    for j = 1, #probes, 8 do
      if string.find(blob, string.sub(probes, j, j + 7), 2, true) then
        found = 1
        break
      end
    end
  end
  out[i] = found
end
return out
"""


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

    @property
    def signature(self) -> tuple[Any, ...]:
        """Everything read of the lead: equal signatures, equal decisions."""
        return (self.raw_state, self.raw_checkpoint, self.log is not None, self.raw_log)


@dataclass(frozen=True)
class LeadUpdate:
    """What one batch did to one lead."""

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    added: int
    duplicates: int
    outcome: Outcome | None
    # Ids merged into this lead earlier (or in this merge): an erasure covers them too.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchResult:
    leads: list[LeadUpdate]
    # Events dropped because their lead was erased before (a re-import of an erased person).
    dropped: int = 0
    # Write conflicts (another writer changed a watched key first), and the leads decided
    # again because of them: only those whose data had changed, not the whole batch.
    conflicts: int = 0
    redecided: int = 0

    @property
    def erased(self) -> list[Lead]:
        return [
            (u.crm, lead_id) for u in self.leads if u.outcome and u.outcome.erase for lead_id in (u.lead_id, *u.aliases)
        ]

    @property
    def added(self) -> int:
        return sum(u.added for u in self.leads)

    @property
    def duplicates(self) -> int:
        return sum(u.duplicates for u in self.leads)

    @property
    def actions(self) -> list[Action]:
        return [a for u in self.leads if u.outcome for a in u.outcome.actions]

    @property
    def new_decisions(self) -> list[tuple[str, str, str | None]]:
        return [d for u in self.leads if u.outcome for d in u.outcome.new_decisions]

    @property
    def paths(self) -> dict[str, int]:
        """How many leads were evaluated each way (`Outcome.path`)."""
        out: dict[str, int] = {}
        for u in self.leads:
            if u.outcome is not None and u.outcome.path:
                out[u.outcome.path] = out.get(u.outcome.path, 0) + 1
        return out


class LeadStore:
    """Per-lead event logs and states in Redis (connection passed in)."""

    def __init__(self, connection: redis.Redis, suppression_key: bytes | None = None) -> None:
        self.redis = connection
        self.suppression_key = suppression_key

    def _optimistic(
        self, what: str, attempt: Callable[[Pipeline], T], conflicted: Callable[[], None] | None = None
    ) -> T:
        """Run `attempt` in a WATCH/MULTI transaction; again, from its reads, when a watched key changed.

        `attempt` watches what it reads and queues its writes after `pipe.multi()`; a write
        conflict (another worker committed first) raises WatchError at EXEC and it runs again.
        StoreError after MAX_ATTEMPTS conflicts (`what` says what was being written).
        """
        for _attempt in range(MAX_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    return attempt(pipe)
                except redis.WatchError:
                    if conflicted is not None:
                        conflicted()
        raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts {what}")

    def apply_batch(self, events: Iterable[Event], decide: Decide | None = None) -> BatchResult:
        """Add events to their leads' logs, once each, and persist `decide`'s outcome, atomically."""
        fresh: dict[Lead, dict[bytes, LoggedEvent]] = {}
        received: dict[Lead, int] = {}
        for event in events:
            lead = (event.crm.value, event.lead_id)
            logged = eventlog.to_logged(event)
            fresh.setdefault(lead, {}).setdefault(logged.key, logged)
            received[lead] = received.get(lead, 0) + 1
        return self._transact(fresh, received, decide, screen=decide is not None)

    def _screen(
        self, conn: Any, fresh: dict[Lead, dict[bytes, LoggedEvent]]
    ) -> tuple[dict[Lead, dict[bytes, LoggedEvent]], int, dict[Lead, tuple[str, ...]]]:
        """Return `fresh` without erased leads' events, how many were dropped, and listed leads.

        Listed leads are those whose email is on the suppression list (an earlier erasure of
        the same person; their events come back without the email), or suppressed records
        deleted and restored in the CRM; each with the channels it objected to (empty: all).
        One SMISMEMBER round trip on `conn`, and only where a suppression key is configured.
        """

        key = self.suppression_key
        if key is None or not fresh:
            return fresh, 0, {}
        probes: list[tuple[Lead, str, str]] = []
        for lead, events in fresh.items():
            probes.append((lead, "lead", lead_hash(key, *lead)))
            probes.append((lead, "objected", objection_hash(key, *lead)))
            probes += [(lead, f"objected:{c}", objection_hash(key, *lead, c)) for c in OBJECTION_CHANNELS]
            for ev in events.values():
                email = ev.data.get("email") if ev.type is EventType.LEAD_PROFILE else None
                if email:
                    probes.append((lead, "email", email_hash(key, email)))
        hits: list[int] = conn.smismember(SUPPRESSED_KEY, [h for _, _, h in probes])
        erased = {lead for (lead, kind, _), hit in zip(probes, hits, strict=True) if hit and kind == "lead"}
        recognised = {lead for (lead, kind, _), hit in zip(probes, hits, strict=True) if hit and kind == "email"}
        channels: dict[Lead, set[str]] = {}
        for (lead, kind, _), hit in zip(probes, hits, strict=True):
            if hit and kind.startswith("objected"):
                channels.setdefault(lead, set()).add(kind.partition(":")[2] or "all")
        # Listed: an erased person's email again (every channel), or a suppressed lead deleted
        # and restored in the CRM (the channels it had objected to).
        listed = {
            lead: () if lead in recognised or "all" in channels.get(lead, ()) else tuple(sorted(channels[lead]))
            for lead in recognised | channels.keys()
        }
        kept = {lead: events for lead, events in fresh.items() if lead not in erased}
        for lead in recognised & kept.keys():
            # Keep the counters of a re-created erased person, never their email again.
            kept[lead] = {k: _without_email(ev) for k, ev in kept[lead].items()}
        return kept, sum(len(fresh[lead]) for lead in erased), listed

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
        memo: dict[Lead, tuple[tuple[Any, ...], list[LoggedEvent], list[LoggedEvent], Outcome | None]] = {}
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
            fresh, dropped, listed = self._screen(pipe, resolved) if screening else (resolved, 0, {})
            leads = [lead for lead in leads if lead in fresh]
            if not leads:
                return BatchResult([], dropped)
            reads = self._read(pipe, leads, fresh, decide is not None)
            forgotten = self._forgotten(pipe, fresh) if asked_erasure else {}
            # The list index moves with the state record (worker/leadindex.py).
            indexed = leadindex.read(pipe, leads) if decide is not None else []
            created = 0  # leads whose log this batch creates, less those it erases
            updates = []
            writes: list[tuple[Lead, _Read, list[LoggedEvent], Outcome | None, Any]] = []
            for i, (lead, read) in enumerate(zip(leads, reads, strict=True)):
                sig = (
                    read.signature,
                    lead in listed,
                    listed.get(lead),
                    tuple(fresh[lead]),
                    forgotten.get(lead),
                )
                if lead in memo and memo[lead][0] == sig:
                    _, history, new, outcome = memo[lead]
                else:
                    redecided += lead in memo
                    new = [ev for k, ev in fresh[lead].items() if k not in read.present]
                    stored = read.checkpoint
                    if stored is not None and any(ev.occurred_ms <= stored.at_ms for ev in new):
                        stored = None  # a late event: the replay starts over from the log
                    if stored is not None:
                        history = stored.events_after() + new
                    else:
                        history = (read.log or []) + new
                    outcome = None
                    if decide is not None and (history or read.raw_state is not None):
                        prev = json.loads(read.raw_state) if read.raw_state else None
                        view = LeadView(
                            *lead,
                            history,
                            prev,
                            len(new),
                            lead in listed,
                            listed.get(lead, ()),
                            stored,
                            self._loader(pipe, lead, new, read.log),
                        )
                        outcome = decide(view)
                    memo[lead] = (sig, history, new, outcome)
                entry = None
                if outcome is not None and not outcome.erase:
                    entry = self._index_entry(pipe, lead, read, indexed[i], history, new, outcome)
                writes.append((lead, read, new, outcome, entry))
                dups = counts.get(lead, 0) - len(new)
                merged_in = tuple(aliases.get(lead, ())) if outcome is not None and outcome.erase else ()
                updates.append(LeadUpdate(lead[0], lead[1], history, len(new), dups, outcome, merged_in))
            pipe.multi()
            for i, (lead, read, new, outcome, entry) in enumerate(writes):
                old_row = read.checkpoint.row if read.checkpoint is not None else None
                if outcome is not None and outcome.erase:
                    self._queue_erasure(pipe, lead, outcome, aliases.get(lead, []), forgotten.get(lead, []))
                    aggregates.queue_delta(pipe, old_row, None)
                    leadindex.queue_update(pipe, lead, indexed[i], None)
                    created -= read.log_exists
                    continue
                if new:
                    # APPEND: the log is never read back for a live batch.
                    records = eventlog.encode(new)
                    pipe.append(lead_key(*lead), records if read.log_exists else eventlog.VERSION + records)
                    created += not read.log_exists
                if outcome is not None:
                    self._queue_outcome(pipe, lead, outcome, read.raw_state is not None)
                    aggregates.queue_delta(pipe, old_row, outcome.row if outcome.checkpoint else None)
                    leadindex.queue_update(pipe, lead, indexed[i], entry)
                elif new:
                    # No decider: the checkpoint would miss these events (and its row goes with it).
                    pipe.delete(checkpoint_key(*lead))
                    aggregates.queue_delta(pipe, old_row, None)
            leadindex.queue_tracked(pipe, created)
            pipe.execute()
            return BatchResult(updates, dropped, conflicts, redecided)

        def conflicted() -> None:
            nonlocal conflicts
            conflicts += 1

        return self._optimistic(f"on {len(batch)} leads", apply_once, conflicted)

    def _index_entry(
        self,
        pipe: Any,
        lead: Lead,
        read: _Read,
        old: Any,
        history: list[LoggedEvent],
        new: list[LoggedEvent],
        outcome: Outcome,
    ) -> Any:
        """The lead's list-index entry after this outcome (worker/leadindex.py).

        The index folds the whole history for a lead's profile when it lists the lead for the
        first time or a profile event arrives; a batch that continued the checkpoint holds only
        the events after it, so the log is read then (rare: most batches re-use the entry).
        """
        listed_now = outcome.state is not None or old is not None
        listed_now = listed_now or any(ev.type is EventType.DEAL_UPDATED for ev in new)
        folds = old is None or any(ev.type in leadindex.PROFILE_TYPES for ev in new)
        if read.log is None and listed_now and folds:
            history = self._loader(pipe, lead, new, None)()
        return leadindex.entry_for(outcome.state, history, old, new)

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
        # A redelivery may carry another date than the first delivery (Salesforce re-sends an
        # edited Task under its id): the dedup keys are looked for in the logs, in Redis, so
        # the logs need not travel. A hit (or a key-like run of bytes inside a record, which
        # would be no more than a 2^-64 chance) sends the lead down the exact path below.
        maybe: list[int] = (
            pipe.eval(
                _PROBE_KEYS,
                len(live),
                *[lead_key(*leads[i]) for i in live],
                *[b"".join(fresh[leads[i]]) for i in live],
            )
            if live
            else []
        )
        clean = {i for i, hit in zip(live, maybe, strict=True) if not hit}
        for i in range(n):
            ck = stored[i]
            if ck is not None and i in clean:
                reads.append(_Read(states[i], raw_cks[i], None, ck, None, set(), True))
            else:
                reads.append(None)
                late.append(i)
        if late:
            blobs: list[bytes | None] = pipe.mget([lead_key(*leads[i]) for i in late])
            for i, blob in zip(late, blobs, strict=True):
                log = eventlog.decode(blob)
                # The checkpoint stays usable if the old events turn out to be redeliveries.
                keys = {ev.key for ev in log}
                reads[i] = _Read(states[i], raw_cks[i], blob, stored[i], log, keys, blob is not None)
        return [r for r in reads if r is not None]

    @staticmethod
    def _loader(
        pipe: Any, lead: Lead, new: list[LoggedEvent], log: list[LoggedEvent] | None
    ) -> Callable[[], list[LoggedEvent]]:
        """Read a lead's whole event set (the log, watched already, and this batch's new events)."""

        def load() -> list[LoggedEvent]:
            if log is not None:
                return log + new
            blob: bytes | None = pipe.get(lead_key(*lead))
            return eventlog.decode(blob) + new

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

    def _queue_erasure(
        self, pipe: Any, lead: Lead, outcome: Outcome, aliases: Iterable[str] = (), forgotten: Iterable[str] = ()
    ) -> None:

        pipe.delete(lead_key(*lead), state_key(*lead), checkpoint_key(*lead))
        remembered = list(forgotten)
        if remembered and self.suppression_key is not None:
            # The lead was deleted in the CRM before its erasure arrived: its emails, kept
            # as keyed hashes for this, join the suppression list like the lead's own would.
            pipe.sadd(SUPPRESSED_KEY, *remembered)
            pipe.delete(forgotten_key(lead_hash(self.suppression_key, *lead)))
        pipe.zrem(DUE_KEY, due_member(*lead))
        merged = list(aliases)
        if merged and self.suppression_key is not None:
            # Ids merged into the erased lead are the same person: their events are dropped
            # from now on too, and the mapping that named them goes.
            hashes = [lead_hash(self.suppression_key, lead[0], m) for m in merged]
            pipe.sadd(SUPPRESSED_KEY, *hashes)
            pipe.hdel(merged_key(lead[0]), *merged)
        if outcome.suppress_hashes:
            pipe.sadd(SUPPRESSED_KEY, *outcome.suppress_hashes)
        if outcome.audit is not None:
            pipe.rpush(AUDIT_KEY, json.dumps(outcome.audit, separators=(",", ":")))

    @staticmethod
    def _queue_outcome(pipe: Any, lead: Lead, outcome: Outcome, had_state: bool = True) -> None:
        skey = state_key(*lead)
        if outcome.checkpoint is not None:
            pipe.set(checkpoint_key(*lead), outcome.checkpoint)
        else:
            # No checkpoint (every event dated after `now`): an older one would miss them.
            pipe.delete(checkpoint_key(*lead))
        if outcome.state is None and not had_state and not outcome.actions:
            # The common case (an ACTIVE lead without decisions, before and after): a due
            # entry only ever exists beside a state record, so there is nothing to write.
            return
        if outcome.state is None:
            pipe.delete(skey)
        else:
            pipe.set(skey, json.dumps(outcome.state, separators=(",", ":")))
        member = due_member(*lead)
        if outcome.due_ms is None:
            pipe.zrem(DUE_KEY, member)
        else:
            pipe.zadd(DUE_KEY, {member: outcome.due_ms})
        if outcome.actions:
            encoded = [json.dumps(a, separators=(",", ":")) for a in outcome.actions]
            pipe.rpush(ACTIONS_KEY, *encoded)
            pipe.ltrim(ACTIONS_KEY, -ACTIONS_KEPT, -1)
            live = [e for a, e in zip(outcome.actions, encoded, strict=True) if not a.get("dry_run")]
            if live:
                pipe.rpush(outbox_key(lead[0]), *live)

    def merge(self, crm: str, into: str, merged: list[str], decide: Decide) -> LeadUpdate | None:
        """Fold the merged leads' histories into `into` (a CRM merge) and re-decide it, atomically.

        None when there was nothing to merge. An update whose outcome erases means `into`
        and the merged leads are gone: the caller purges their queued payloads.
        """

        survivor = (crm, into)
        keys = [lead_key(crm, lead) for lead in [into, *merged]] + [state_key(crm, lead) for lead in [into, *merged]]
        ck_keys = [checkpoint_key(crm, lead) for lead in [into, *merged]]
        key = self.suppression_key

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
                emails = _emails(ev for blob in logs if blob is not None for ev in eventlog.decode(blob))
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
                self._queue_erasure(pipe, survivor, outcome, away)
                pipe.execute()
                return LeadUpdate(crm, into, [], 0, 0, outcome, away)
            values: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
            blobs = values[: 1 + len(merged)]
            union: dict[bytes, LoggedEvent] = {}
            for blob in blobs:
                for ev in eventlog.decode(blob):
                    union.setdefault(ev.key, ev)
            remap = {m: into for m in [*merged, *chained] if aliases.get(m) != into}
            if len(union) == len(eventlog.decode(blobs[0])) and not any(blobs[1:]):
                # Nothing to fold (a redelivery, or records Pruner never saw): still
                # remember where their later events belong.
                if remap:
                    pipe.multi()
                    pipe.hset(merged_key(crm), mapping=remap)  # type: ignore[arg-type]
                    pipe.execute()
                return None
            history = list(union.values())
            raw_state = values[1 + len(merged)]
            prev = json.loads(raw_state) if raw_state else None
            # A merged record recognised as an erased person (its email on the
            # suppression list) keeps the survivor suppressed: the flag lives in states.
            states = [json.loads(s) for s in values[1 + len(merged) :] if s]
            listed = any(s.get("suppression_list") for s in states)
            # What a merged record was told (its acted decisions), the survivor was told
            # too: the CRM merged the records, and the same story re-told on the survivor
            # names the same decisions. The survivor's own come last (kept when trimmed).
            told = list(dict.fromkeys(a for s in states[1:] + states[:1] for a in s.get("acted", [])))
            if told:
                prev = {**(prev or {}), "acted": told}
            outcome = decide(LeadView(crm, into, history, prev, len(history), listed))
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
                self._queue_erasure(pipe, survivor, outcome, gone)
                leadindex.queue_update(pipe, survivor, indexed[into], None)
            else:
                pipe.set(lead_key(crm, into), eventlog.append(None, history))
                self._queue_outcome(pipe, survivor, outcome)
                entry = leadindex.entry_for(outcome.state, history, None, history)
                leadindex.queue_update(pipe, survivor, indexed[into], entry)
                if remap:
                    pipe.hset(merged_key(crm), mapping=remap)  # type: ignore[arg-type]
            pipe.execute()
            return LeadUpdate(crm, into, history, len(history), 0, outcome, gone)

        return self._optimistic(f"merging {len(merged)} leads", merge_once)

    def forget(self, crm: str, lead_id: str) -> bool:
        """Delete everything held about a lead deleted in the CRM (not a suppression).

        A SUPPRESSED lead leaves a keyed hash of its id behind (where a suppression key is
        configured): a record restored in the CRM must not come back open to contact, since
        only an explicit re-consent ends a suppression. And for a few days, keyed hashes of
        its emails: HubSpot's privacyDeletion may arrive after the deletion was carried out,
        and the erasure must still recognise the person if they are imported again.
        """

        key = self.suppression_key

        def forget_one(pipe: Pipeline) -> bool:
            pipe.watch(state_key(crm, lead_id), merged_key(crm), lead_key(crm, lead_id), checkpoint_key(crm, lead_id))
            (row,) = _rows(pipe, [checkpoint_key(crm, lead_id)])
            blob = pipe.get(lead_key(crm, lead_id))
            emails = _emails(eventlog.decode(blob) if blob is not None else [])  # type: ignore[arg-type]
            raw = pipe.get(state_key(crm, lead_id))
            state = json.loads(raw) if raw is not None else {}
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
                pipe.sadd(SUPPRESSED_KEY, *_objection_hashes(key, crm, lead_id, state))
            if emails and key is not None:
                forgotten = forgotten_key(lead_hash(key, crm, lead_id))
                pipe.sadd(forgotten, *(email_hash(key, e) for e in emails))
                pipe.expire(forgotten, FORGOTTEN_TTL_S)
            return bool(pipe.execute()[0])

        return self._optimistic("forgetting a lead", forget_one)

    def reindex(self, batch: int = 500) -> int:
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
                    history = eventlog.decode(blob) if blob is not None else []
                    state = json.loads(raw_state) if raw_state else None
                    leadindex.queue_update(pipe, lead, old[i], leadindex.entry_for(state, history, None, history))
                pipe.execute()

            self._optimistic(f"indexing {len(leads)} leads", index_batch)
            done += len(leads)
            names.clear()

        for name in self.redis.scan_iter(f"{PREFIX}*", count=batch):
            names.append(name)
            if len(names) >= batch:
                flush()
        if names:
            flush()
        # The count of leads too (a store from before the index never kept it). A lead created
        # or deleted by a worker during the scan may be off by one here: this runs once.
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(leadindex.TRACKED_KEY, done)
            pipe.set(leadindex.INDEXED_KEY, str(done))
            pipe.execute()
        return done

    def history(self, crm: str, lead_id: str) -> list[LoggedEvent] | None:
        """Return a lead's event log, or None when the lead is unknown."""
        blob = self.redis.get(lead_key(crm, lead_id))
        return None if blob is None else eventlog.decode(blob)  # type: ignore[arg-type]

    def checkpoint(self, crm: str, lead_id: str) -> Stored | None:
        """Return a lead's checkpoint (None: unknown lead, or not evaluated since the upgrade)."""
        raw: bytes | None = self.redis.get(checkpoint_key(crm, lead_id))  # type: ignore[assignment]
        return unpack(raw)

    def state(self, crm: str, lead_id: str) -> StateRecord | None:
        """Return a lead's stored state record (None: ACTIVE without decisions, or unknown)."""
        raw = self.redis.get(state_key(crm, lead_id))
        return None if raw is None else json.loads(raw)

    def preview(self, leads: Iterable[Lead], decide: Decide) -> list[tuple[Lead, Outcome]]:
        """Say what `decide` would make of each lead, writing nothing (a sweep's dry run)."""
        out = []
        for crm, lead_id in leads:
            history = self.history(crm, lead_id) or []
            view = LeadView(crm, lead_id, history, self.state(crm, lead_id), 0)
            out.append(((crm, lead_id), decide(view)))
        return out

    def due(self, now_ms: int, limit: int) -> list[Lead]:
        """Return up to `limit` leads whose next due time is at or before `now_ms`."""
        members: list[bytes] = self.redis.zrangebyscore(DUE_KEY, "-inf", now_ms, start=0, num=limit)  # type: ignore[assignment]
        return [parse_due_member(m) for m in members]

    def actions(self, start: int = 0, end: int = -1) -> list[Action]:
        """Return recorded CRM actions (the outbox), oldest first."""
        raw: list[bytes] = self.redis.lrange(ACTIONS_KEY, start, end)  # type: ignore[assignment]
        return [json.loads(a) for a in raw]
