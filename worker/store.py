"""The Redis lead store: a packed event log and a small state record per lead.

Keys (all prefixed `pruner:`):

    lead:{crm}:{lead_id}    the lead's event log (worker/eventlog.py), ~20 B per event
    state:{crm}:{lead_id}   JSON: state, loss reason, decisions, acted decision keys, as-of time
                            (absent while a lead is ACTIVE with no decisions: most leads)
    due                     sorted set {crm}:{lead_id} -> next time a time-based rule may fire
    actions                 list of JSON CRM actions decided, newest last (a bounded record, dry runs too)
    outbox:{crm}            JSON CRM actions still to execute (drained by worker/actions.py)
    merged:{crm}            hash: id of a record merged away in the CRM -> the id it was merged into
    suppressed              set of keyed hashes of erased leads and their emails (worker/gdpr.py)
    erasures                list of JSON erasure audit records (hashes, time, source; no personal data)

A batch is applied in a handful of round trips whatever its size: WATCH the
merged-id hash and look the batch's ids up in it (records merged away in the CRM),
WATCH the touched leads' keys, screen them against the suppression set (where a key
is configured), MGET them, then MULTI/SET/ZADD/RPUSH/EXEC. When another worker (or
the sweep) changed one of those leads in between, EXEC fails and the batch is
re-read and re-decided — nothing is lost, nothing counted or acted on twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from rules.counters import LoggedEvent
from rules.events import Event, EventType
from worker import eventlog, leadindex
from worker.errors import StoreError

log = logging.getLogger(__name__)

PREFIX = "pruner:lead:"
STATE_PREFIX = "pruner:state:"
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


OBJECTION_CHANNELS = ("email", "phone")


def _objection_hashes(key: bytes, crm: str, lead_id: str, state: dict[str, Any]) -> list[str]:
    """Keyed hashes recording what a suppressed lead objected to: every channel, or some."""
    from rules.lifecycle import ALL_CHANNELS, covered_channels
    from worker import gdpr

    channels: set[str] = set()
    for decision in state.get("decisions", []):
        if decision.get("to") == "SUPPRESSED":
            channels |= covered_channels((decision.get("inputs") or {}).get("channels") or ["all"])
    if not channels or channels >= ALL_CHANNELS:
        return [gdpr.objection_hash(key, crm, lead_id)]
    return [gdpr.objection_hash(key, crm, lead_id, c) for c in sorted(channels)]


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


@dataclass(frozen=True)
class LeadView:
    """What a decider sees of one lead inside the transaction."""

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    state: dict[str, Any] | None
    added: int
    # An email of this lead is on the suppression list (a re-created erased person).
    listed: bool = False
    # The channels a restored record objected to (empty: all of them).
    listed_channels: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What a decider wants persisted for one lead."""

    state: dict[str, Any] | None = None  # None: no state record (plain ACTIVE lead)
    due_ms: int | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    # Decisions this evaluation added (rule, to, reason): aggregate metrics only.
    new_decisions: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Erasure: delete everything about the lead, keep these keyed hashes and one audit record.
    erase: bool = False
    suppress_hashes: list[str] = field(default_factory=list)
    audit: dict[str, Any] | None = None


Decider = Callable[[LeadView], Outcome]


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
    def actions(self) -> list[dict[str, Any]]:
        return [a for u in self.leads if u.outcome for a in u.outcome.actions]

    @property
    def new_decisions(self) -> list[tuple[str, str, str | None]]:
        return [d for u in self.leads if u.outcome for d in u.outcome.new_decisions]


class LeadStore:
    """Per-lead event logs and states in Redis (connection passed in)."""

    def __init__(self, connection: redis.Redis, suppression_key: bytes | None = None) -> None:
        self.redis = connection
        self.suppression_key = suppression_key

    def apply_batch(self, events: Iterable[Event], decide: Decider | None = None) -> BatchResult:
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
        from worker import gdpr

        key = self.suppression_key
        if key is None or not fresh:
            return fresh, 0, {}
        probes: list[tuple[Lead, str, str]] = []
        for lead, events in fresh.items():
            probes.append((lead, "lead", gdpr.lead_hash(key, *lead)))
            probes.append((lead, "objected", gdpr.objection_hash(key, *lead)))
            probes += [(lead, f"objected:{c}", gdpr.objection_hash(key, *lead, c)) for c in OBJECTION_CHANNELS]
            for ev in events.values():
                email = ev.data.get("email") if ev.type is EventType.LEAD_PROFILE else None
                if email:
                    probes.append((lead, "email", gdpr.email_hash(key, email)))
        hits: list[int] = conn.smismember(gdpr.SUPPRESSED_KEY, [h for _, _, h in probes])
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

    def reevaluate(self, leads: Iterable[Lead], decide: Decider) -> BatchResult:
        """Re-decide leads without new events (the time-based sweep)."""
        return self._transact({lead: {} for lead in leads}, {}, decide)

    def _transact(
        self,
        batch: dict[Lead, dict[bytes, LoggedEvent]],
        received: dict[Lead, int],
        decide: Decider | None,
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
        from worker.gdpr import SUPPRESSED_KEY

        watched = [SUPPRESSED_KEY] if screening else []
        alias_keys = sorted({merged_key(crm) for crm, _ in batch}) if screen else []
        asked_erasure = screen and any(
            ev.type is EventType.ERASURE_REQUESTED for events in batch.values() for ev in events.values()
        )
        for _attempt in range(MAX_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    if alias_keys:
                        pipe.watch(*alias_keys)
                        resolved, counts, aliases = self._resolve(pipe, batch, received, asked_erasure)
                    else:
                        resolved, counts, aliases = batch, received, {}
                    leads = list(resolved)
                    log_keys = [lead_key(*lead) for lead in leads]
                    keys = log_keys + ([state_key(*lead) for lead in leads] if decide else [])
                    pipe.watch(*keys, *watched)
                    fresh, dropped, listed = self._screen(pipe, resolved) if screening else (resolved, 0, {})
                    leads = [lead for lead in leads if lead in fresh]
                    log_keys = [lead_key(*lead) for lead in leads]
                    keys = log_keys + ([state_key(*lead) for lead in leads] if decide else [])
                    if not leads:
                        return BatchResult([], dropped)
                    values: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
                    blobs, states = values[: len(leads)], values[len(leads) :]
                    forgotten = self._forgotten(pipe, fresh) if asked_erasure else {}
                    # The list index moves with the state record (worker/leadindex.py).
                    indexed = leadindex.read(pipe, leads) if decide is not None else []
                    created = 0  # leads whose log this batch creates, less those it erases
                    updates = []
                    log_writes: dict[str, bytes] = {}
                    pipe.multi()
                    for i, (lead, key, blob) in enumerate(zip(leads, log_keys, blobs, strict=True)):
                        present = eventlog.keys(blob)
                        new = [ev for k, ev in fresh[lead].items() if k not in present]
                        new_blob = eventlog.append(blob, new) if new else blob
                        history = eventlog.decode(new_blob)
                        outcome = None
                        raw_state = states[i] if decide is not None else None
                        if decide is not None and (history or raw_state is not None):
                            prev = json.loads(raw_state) if raw_state else None
                            view = LeadView(
                                lead[0], lead[1], history, prev, len(new), lead in listed, listed.get(lead, ())
                            )
                            outcome = decide(view)
                        if outcome is not None and outcome.erase:
                            self._queue_erasure(pipe, lead, outcome, aliases.get(lead, []), forgotten.get(lead, []))
                            leadindex.queue_update(pipe, lead, indexed[i], None)
                            created -= blob is not None
                        else:
                            if new and new_blob is not None:
                                log_writes[key] = new_blob
                                created += blob is None
                            if outcome is not None:
                                self._queue_outcome(pipe, lead, outcome, raw_state is not None)
                                entry = leadindex.entry_for(outcome.state, history, indexed[i], new)
                                leadindex.queue_update(pipe, lead, indexed[i], entry)
                        dups = counts.get(lead, 0) - len(new)
                        merged_in = tuple(aliases.get(lead, ())) if outcome is not None and outcome.erase else ()
                        updates.append(LeadUpdate(lead[0], lead[1], history, len(new), dups, outcome, merged_in))
                    if log_writes:
                        pipe.mset(log_writes)  # one command for the whole batch's logs
                    leadindex.queue_tracked(pipe, created)
                    pipe.execute()
                except redis.WatchError:
                    continue
            return BatchResult(updates, dropped)
        raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts on {len(leads)} leads")

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
        from worker import gdpr

        key = self.suppression_key
        if key is None:
            return {}
        out: dict[Lead, list[str]] = {}
        for lead, events in fresh.items():
            if any(e.type is EventType.ERASURE_REQUESTED for e in events.values()):
                kept = conn.smembers(forgotten_key(gdpr.lead_hash(key, *lead)))
                out[lead] = sorted(h.decode() for h in kept)
        return out

    def _queue_erasure(
        self, pipe: Any, lead: Lead, outcome: Outcome, aliases: Iterable[str] = (), forgotten: Iterable[str] = ()
    ) -> None:
        from worker import gdpr

        pipe.delete(lead_key(*lead), state_key(*lead))
        remembered = list(forgotten)
        if remembered and self.suppression_key is not None:
            # The lead was deleted in the CRM before its erasure arrived: its emails, kept
            # as keyed hashes for this, join the suppression list like the lead's own would.
            pipe.sadd(gdpr.SUPPRESSED_KEY, *remembered)
            pipe.delete(forgotten_key(gdpr.lead_hash(self.suppression_key, *lead)))
        pipe.zrem(DUE_KEY, due_member(*lead))
        merged = list(aliases)
        if merged and self.suppression_key is not None:
            # Ids merged into the erased lead are the same person: their events are dropped
            # from now on too, and the mapping that named them goes.
            hashes = [gdpr.lead_hash(self.suppression_key, lead[0], m) for m in merged]
            pipe.sadd(gdpr.SUPPRESSED_KEY, *hashes)
            pipe.hdel(merged_key(lead[0]), *merged)
        if outcome.suppress_hashes:
            pipe.sadd(gdpr.SUPPRESSED_KEY, *outcome.suppress_hashes)
        if outcome.audit is not None:
            pipe.rpush(gdpr.AUDIT_KEY, json.dumps(outcome.audit, separators=(",", ":")))

    @staticmethod
    def _queue_outcome(pipe: Any, lead: Lead, outcome: Outcome, had_state: bool = True) -> None:
        skey = state_key(*lead)
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

    def merge(self, crm: str, into: str, merged: list[str], decide: Decider) -> LeadUpdate | None:
        """Fold the merged leads' histories into `into` (a CRM merge) and re-decide it, atomically.

        None when there was nothing to merge. An update whose outcome erases means `into`
        and the merged leads are gone: the caller purges their queued payloads.
        """
        from worker import gdpr

        survivor = (crm, into)
        keys = [lead_key(crm, lead) for lead in [into, *merged]] + [state_key(crm, lead) for lead in [into, *merged]]
        key = self.suppression_key
        for _attempt in range(MAX_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    # Watched and read in the transaction, as in apply_batch: an erasure
                    # committing meanwhile must not be undone by the merge.
                    pipe.watch(*keys, merged_key(crm), *([gdpr.SUPPRESSED_KEY] if key else []))
                    ids = [into, *merged]
                    indexed = dict(zip(ids, leadindex.read(pipe, [(crm, m) for m in ids]), strict=True))
                    raw_aliases: dict[bytes, bytes] = pipe.hgetall(merged_key(crm))  # type: ignore[assignment]
                    aliases = {k.decode(): v.decode() for k, v in raw_aliases.items()}
                    # Ids merged earlier into one merged now: they follow it to the survivor.
                    chained = [alias for alias, target in aliases.items() if target in merged]
                    if key is not None and pipe.sismember(gdpr.SUPPRESSED_KEY, gdpr.lead_hash(key, crm, into)):
                        # A merge delivered after the survivor's erasure: the merged records
                        # are the same erased person, so they go too and nothing is re-created;
                        # their ids are dropped from now on like the survivor's. The erasing
                        # outcome tells the caller to purge their queued payloads.
                        logs: list[bytes | None] = pipe.mget([lead_key(crm, m) for m in merged])  # type: ignore[assignment]
                        emails = _emails(ev for blob in logs if blob is not None for ev in eventlog.decode(blob))
                        pipe.multi()
                        for lead in merged:
                            pipe.delete(lead_key(crm, lead), state_key(crm, lead))
                            pipe.zrem(DUE_KEY, due_member(crm, lead))
                        for lead, entry in indexed.items():
                            leadindex.queue_update(pipe, (crm, lead), entry, None)
                        leadindex.queue_tracked(pipe, -sum(blob is not None for blob in logs))
                        away = (*merged, *chained)
                        # As the erasure would have, had the merge come first: the merged ids and
                        # the person's emails, recognised if they are imported again.
                        outcome = Outcome(erase=True, suppress_hashes=[gdpr.email_hash(key, e) for e in sorted(emails)])
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
                    outcome = decide(LeadView(crm, into, history, prev, len(history), listed))
                    pipe.multi()
                    for lead in merged:
                        pipe.delete(lead_key(crm, lead), state_key(crm, lead))
                        pipe.zrem(DUE_KEY, due_member(crm, lead))
                        leadindex.queue_update(pipe, (crm, lead), indexed[lead], None)
                    # The merged logs go; the survivor's exists from now on, unless erased.
                    leadindex.queue_tracked(
                        pipe, (blobs[0] is None and not outcome.erase) - sum(1 for b in blobs[1:] if b)
                    )
                    if outcome.erase and blobs[0] is not None:
                        leadindex.queue_tracked(pipe, -1)
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
                except redis.WatchError:
                    continue
            return LeadUpdate(crm, into, history, len(history), 0, outcome, gone)
        raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts merging {len(merged)} leads")

    def forget(self, crm: str, lead_id: str) -> bool:
        """Delete everything held about a lead deleted in the CRM (not a suppression).

        A SUPPRESSED lead leaves a keyed hash of its id behind (where a suppression key is
        configured): a record restored in the CRM must not come back open to contact, since
        only an explicit re-consent ends a suppression. And for a few days, keyed hashes of
        its emails: HubSpot's privacyDeletion may arrive after the deletion was carried out,
        and the erasure must still recognise the person if they are imported again.
        """
        from worker import gdpr

        key = self.suppression_key
        for _attempt in range(MAX_ATTEMPTS):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(state_key(crm, lead_id), merged_key(crm), lead_key(crm, lead_id))
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
                    pipe.delete(lead_key(crm, lead_id), state_key(crm, lead_id))
                    pipe.zrem(DUE_KEY, due_member(crm, lead_id))
                    leadindex.queue_update(pipe, (crm, lead_id), entry, None)
                    leadindex.queue_tracked(pipe, -(blob is not None))
                    if naming:
                        pipe.hdel(merged_key(crm), *naming)
                    if suppressed and key is not None:
                        pipe.sadd(gdpr.SUPPRESSED_KEY, *_objection_hashes(key, crm, lead_id, state))
                    if emails and key is not None:
                        forgotten = forgotten_key(gdpr.lead_hash(key, crm, lead_id))
                        pipe.sadd(forgotten, *(gdpr.email_hash(key, e) for e in emails))
                        pipe.expire(forgotten, FORGOTTEN_TTL_S)
                    return bool(pipe.execute()[0])
                except redis.WatchError:
                    continue
        raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts forgetting a lead")

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
            for _attempt in range(MAX_ATTEMPTS):
                with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(*keys)
                        values: list[bytes | None] = pipe.mget(keys)  # type: ignore[assignment]
                        old = leadindex.read(pipe, leads)
                        pipe.multi()
                        for i, lead in enumerate(leads):
                            blob, raw_state = values[i], values[len(leads) + i]
                            history = eventlog.decode(blob) if blob is not None else []
                            state = json.loads(raw_state) if raw_state else None
                            leadindex.queue_update(
                                pipe, lead, old[i], leadindex.entry_for(state, history, None, history)
                            )
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue
            else:
                raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts indexing {len(leads)} leads")
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

    def state(self, crm: str, lead_id: str) -> dict[str, Any] | None:
        """Return a lead's stored state record (None: ACTIVE without decisions, or unknown)."""
        raw = self.redis.get(state_key(crm, lead_id))
        return None if raw is None else json.loads(raw)

    def preview(self, leads: Iterable[Lead], decide: Decider) -> list[tuple[Lead, Outcome]]:
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

    def actions(self, start: int = 0, end: int = -1) -> list[dict[str, Any]]:
        """Return recorded CRM actions (the outbox), oldest first."""
        raw: list[bytes] = self.redis.lrange(ACTIONS_KEY, start, end)  # type: ignore[assignment]
        return [json.loads(a) for a in raw]
