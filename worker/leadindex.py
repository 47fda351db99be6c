"""The lead list index: `GET /leads`, `pruner leads` and the dashboard's live numbers.

Listing leads must not scan every lead, so each listed lead has one small index entry,
written in the same Redis transaction as its state record (worker/store.py calls
`queue_update` with the entry it read before MULTI and the one it computed):

    leads:entries                 hash {crm}:{lead_id} -> compact JSON entry (state, reason, rules,
                                  source, segment, priority, deal stage, changed time; no personal data)
    leads:by:all                  sorted set {crm}:{lead_id} -> changed time (ms)
    leads:by:{dimension}:{value}  the same, one per state, loss reason, rule, source and outcome
                                  (won/lost/open/suppressed)
    leads:values:{reason|rule}    the loss reasons and rule names ever seen, for the dashboard
    leads:tracked                 how many leads have an event log (listed or not)
    leads:indexed                 set once every lead written before the index existed is in it

Listed are the leads a rule has decided on (they have a state record) and won leads: the
ones an operator looks for. A lead that is merely being worked (ACTIVE, never decided on,
no won deal: most leads) costs the index nothing but its share of `leads:tracked`; it is
listed from its first decision on. Memory is why: an index entry and its sorted-set
memberships cost several hundred bytes, more than the lead's own event log.

A page reads one sorted set newest first (the smallest one among the filters asked, found
with ZCARD) and checks the other filters (crm, segment, priority, stage too) against the
entries: a page with one filter costs O(page); with several, the scan is bounded and the
cursor carries on where it stopped. The dashboard's counts are ZCARD/ZCOUNT on the same sets.

"changed" is the time of the lead's latest decision (the decision's own time, which is
event time), or of its first event for a won lead no rule has decided on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
import redis

from rules.counters import LeadCounters, LoggedEvent, fold
from rules.errors import PrunerError, SchemaError
from rules.events import EventType, format_ms, parse_rfc3339_ms
from rules.states import outcome_of

ENTRIES_KEY = "pruner:leads:entries"
ALL_KEY = "pruner:leads:by:all"
BY_PREFIX = "pruner:leads:by:"
VALUES_PREFIX = "pruner:leads:values:"
INDEXED_KEY = "pruner:leads:indexed"
TRACKED_KEY = "pruner:leads:tracked"
DIMENSIONS = ("crm", "state", "reason", "rule", "source", "segment", "priority", "stage", "outcome")
# The dimensions with a sorted set per value; the others are checked against the entries.
SORTED = ("state", "reason", "rule", "source", "outcome")
# The dimensions whose values are remembered for the dashboard: the policy's own words (rule
# names, loss reasons), never CRM free text, so nothing of an erased lead can linger there.
VOCABULARIES = ("reason", "rule")
FIXED_VALUES = {
    "crm": ("hubspot", "salesforce"),
    "state": ("ACTIVE", "BREAKUP_DUE", "LOST", "REENGAGE_DUE", "WON", "SUPPRESSED"),
    "outcome": ("open", "won", "lost", "suppressed"),
}
# Events that can change an entry's source or deal stage; any other new event leaves them be.
PROFILE_TYPES = frozenset({EventType.LEAD_PROFILE, EventType.DEAL_UPDATED})
MAX_LIMIT = 500
# Entries checked per page at most when several filters are combined: the page may then
# come back short, with a cursor that carries on from where the scan stopped.
SCAN_BUDGET = 5_000
Lead = tuple[str, str]


def by_key(dimension: str, value: str) -> str:
    return f"{BY_PREFIX}{dimension}:{value}"


def member(crm: str, lead_id: str) -> str:
    return f"{crm}:{lead_id}"


@dataclass(frozen=True)
class Entry:
    """What the list shows and filters on for one lead."""

    state: str
    loss_reason: str | None
    rules: tuple[str, ...]
    source: str | None
    deal_stage: str | None
    changed_ms: int
    segment: str | None = None
    priority: str | None = None

    @property
    def outcome(self) -> str:
        return outcome_of(self.state)

    def values(self, crm: str) -> dict[str, set[str]]:
        """The index sets this entry belongs to, per dimension."""
        return {
            "crm": {crm},
            "state": {self.state},
            "reason": {self.loss_reason} if self.loss_reason else set(),
            "rule": set(self.rules),
            "source": {self.source} if self.source else set(),
            "segment": {self.segment} if self.segment else set(),
            "priority": {self.priority} if self.priority else set(),
            "stage": {self.deal_stage} if self.deal_stage else set(),
            "outcome": {self.outcome},
        }

    def encode(self) -> str:
        return json.dumps(
            [
                self.state,
                self.loss_reason,
                list(self.rules),
                self.source,
                self.deal_stage,
                self.changed_ms,
                self.segment,
                self.priority,
            ],
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Entry:
        # msgspec: every batch of a listed lead decodes its entry (json.loads took ~3 us of it).
        state, reason, rules, source, stage, changed, segment, priority = msgspec.json.decode(raw)
        return cls(state, reason, tuple(rules), source, stage, int(changed), segment, priority)


def entry_for(
    state: Mapping[str, Any] | None,
    history: Sequence[LoggedEvent],
    old: Entry | None = None,
    new: Iterable[LoggedEvent] = (),
    folded: LeadCounters | None = None,
) -> Entry | None:
    """Compute a lead's entry from its state record and event log (None: not listed).

    The profile (source, segment, priority) and deal stage come from folding the log, which is
    only done when `old` is missing or a new event can change them: most batches re-use the
    old entry's, and a lead without a state record is only folded when a deal update arrives.

    `folded`: the counters of the log's fold (events past the retention horizon, gone).
    """
    new = list(new)
    if state is None and (old is None or not (history or folded is not None)):
        if not any(ev.type is EventType.DEAL_UPDATED for ev in new):
            return None  # being worked, never decided on: not listed (see the module's docstring)
    record = state or {}
    decisions = record.get("decisions") or []
    if old is None or any(ev.type in PROFILE_TYPES for ev in new):
        c = fold(history, folded)
        profile = (c.source, c.deal_stage, c.segment, c.priority)
    else:
        profile = (old.source, old.deal_stage, old.segment, old.priority)
    if decisions:
        changed = _ms(decisions[-1].get("at"))  # the replay records decisions in time order
    elif old is not None:
        changed = old.changed_ms
    else:
        changed = min((ev.occurred_ms for ev in history), default=0)
    rules = tuple(sorted({str(d["rule"]) for d in decisions if d.get("rule")}))
    source, stage, segment, priority = profile
    state_name, reason = str(record.get("state", "ACTIVE")), record.get("loss_reason")
    entry = Entry(state_name, reason, rules, source, stage, changed, segment, priority)
    return entry if state is not None or entry.outcome == "won" else None


def _ms(value: object) -> int:
    return _parsed_ms(value) if isinstance(value, str) else _parse_ms(value)


@lru_cache(maxsize=4096)
def _parsed_ms(value: str) -> int:
    # A listed lead's latest decision is the same one batch after batch: parsed once.
    return _parse_ms(value)


def _parse_ms(value: object) -> int:
    try:
        return parse_rfc3339_ms(value, "decision time")
    except SchemaError:
        return 0


def read(connection: Any, leads: Sequence[Lead]) -> list[Entry | None]:
    """Read the leads' current entries (one HMGET; on a watching pipeline, before MULTI)."""
    if not leads:
        return []
    raw: list[bytes | None] = connection.hmget(ENTRIES_KEY, [member(*lead) for lead in leads])
    return [Entry.decode(r) if r is not None else None for r in raw]


def queue_update(pipe: Any, lead: Lead, old: Entry | None, new: Entry | None) -> None:
    """Queue the writes that move a lead's index entry from `old` to `new` (None: remove it).

    Nothing is written when the entry did not change, which is what most batches see.
    """
    if old == new:
        return
    crm, _ = lead
    name = member(*lead)
    before = old.values(crm) if old else {d: set() for d in DIMENSIONS}
    after = new.values(crm) if new else {d: set() for d in DIMENSIONS}
    for dim in SORTED:
        for value in before[dim] - after[dim]:
            pipe.zrem(by_key(dim, value), name)
    if new is None:
        pipe.zrem(ALL_KEY, name)
        pipe.hdel(ENTRIES_KEY, name)
        return
    pipe.hset(ENTRIES_KEY, name, new.encode())
    score = {name: new.changed_ms}
    pipe.zadd(ALL_KEY, score)
    for dim in SORTED:
        for value in after[dim]:
            pipe.zadd(by_key(dim, value), score)
        if dim in VOCABULARIES and after[dim] - before[dim]:
            pipe.sadd(VALUES_PREFIX + dim, *(after[dim] - before[dim]))


# --- reading pages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """A list query: every given field must match (values exact; changed in [since_ms, until_ms], in ms)."""

    crm: str | None = None
    state: str | None = None
    reason: str | None = None
    rule: str | None = None
    source: str | None = None
    segment: str | None = None
    priority: str | None = None
    stage: str | None = None
    outcome: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def sets(self) -> list[str]:
        return [by_key(dim, value) for dim in SORTED if (value := getattr(self, dim)) is not None]

    def matches(self, crm: str, entry: Entry) -> bool:
        have = entry.values(crm)
        return all(value in have[dim] for dim in DIMENSIONS if (value := getattr(self, dim)) is not None)


@dataclass(frozen=True)
class Row:
    crm: str
    lead_id: str
    entry: Entry

    def public(self) -> dict[str, Any]:
        """The docs/http.md list item (ids and lifecycle only), plus the rules that decided."""
        return {
            "crm": self.crm,
            "lead_id": self.lead_id,
            "state": self.entry.state,
            "loss_reason": self.entry.loss_reason,
            "changed_at": format_ms(self.entry.changed_ms),
            "rules": list(self.entry.rules),
        }


@dataclass
class Page:
    rows: list[Row] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(score: int, seen: int) -> str:
    """An opaque position: the changed time reached and how many leads with that time were seen."""
    return base64.urlsafe_b64encode(f"1:{score}:{seen}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """Read a cursor made by `encode_cursor`; ValueError when it is not one."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, score, seen = text.split(":")
        if version != "1" or int(seen) < 0:
            raise ValueError(cursor)
        return int(score), int(seen)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this server made") from None


def page(connection: redis.Redis, filters: Filters, limit: int, cursor: str | None = None) -> Page:
    """Return up to `limit` leads matching `filters`, newest change first, and the cursor after them."""
    sets = filters.sets()
    if sets:
        sizes: list[int] = []
        with connection.pipeline(transaction=False) as pipe:
            for key in sets:
                pipe.zcard(key)
            sizes = pipe.execute()
        driving = sets[sizes.index(min(sizes))]
        if min(sizes) == 0:
            return Page()
    else:
        driving = ALL_KEY
    top, seen = decode_cursor(cursor) if cursor else (filters.until_ms, 0)
    high: float | str = "+inf" if top is None else top
    low: float | str = "-inf" if filters.since_ms is None else filters.since_ms
    out = Page()
    checked = 0
    chunk = min(max(limit * 2, 50), MAX_LIMIT)
    while True:
        raw: list[tuple[bytes, float]] = connection.zrevrangebyscore(  # type: ignore[assignment]
            driving, high, low, start=seen, num=chunk, withscores=True
        )
        if not raw:
            return out
        entries = connection.hmget(ENTRIES_KEY, [m for m, _ in raw])
        for (name, score), blob in zip(raw, entries, strict=True):
            at = int(score)
            # Position after this lead: ties at one time are told apart by how many were seen.
            seen = seen + 1 if at == high else 1
            high = at
            checked += 1
            if blob is None:
                continue  # erased or forgotten between the two reads
            crm, _, lead_id = name.decode().partition(":")
            entry = Entry.decode(blob)
            if filters.matches(crm, entry):
                out.rows.append(Row(crm, lead_id, entry))
                if len(out.rows) >= limit:
                    out.next_cursor = encode_cursor(at, seen)
                    return out
        if len(raw) < chunk:
            return out
        if checked >= SCAN_BUDGET:
            out.next_cursor = encode_cursor(int(high), seen)
            return out


def counts(connection: redis.Redis, dimension: str, since_ms: int | None = None) -> dict[str, int]:
    """Return how many listed leads have each value of `dimension` (changed since `since_ms`)."""
    if dimension in FIXED_VALUES:
        values = list(FIXED_VALUES[dimension])
    else:
        values = sorted(v.decode() for v in connection.smembers(VALUES_PREFIX + dimension))  # type: ignore[union-attr]
    with connection.pipeline(transaction=False) as pipe:
        for value in values:
            if since_ms is None:
                pipe.zcard(by_key(dimension, value))
            else:
                pipe.zcount(by_key(dimension, value), since_ms, "+inf")
        found: list[int] = pipe.execute()
    return {v: n for v, n in zip(values, found, strict=True) if n}


def per_day(
    connection: redis.Redis, dimension: str, values: Sequence[str], days: Sequence[tuple[str, int, int]]
) -> list[tuple[str, dict[str, int]]]:
    """Count leads per day and value, by changed time; `days` are (label, start ms, end ms)."""
    with connection.pipeline(transaction=False) as pipe:
        for _, start, end in days:
            for value in values:
                pipe.zcount(by_key(dimension, value), start, f"({end}")
        found: list[int] = pipe.execute()
    out: list[tuple[str, dict[str, int]]] = []
    for i, (label, _, _) in enumerate(days):
        row = found[i * len(values) : (i + 1) * len(values)]
        out.append((label, {v: n for v, n in zip(values, row, strict=True) if n}))
    return out


def queue_tracked(pipe: Any, delta: int) -> None:
    """Count leads whose event log was created (+1) or deleted (-1), in the same transaction."""
    if delta:
        pipe.incrby(TRACKED_KEY, int(delta))


def tracked(connection: redis.Redis) -> int:
    """How many leads have an event log (listed or not)."""
    return int(connection.get(TRACKED_KEY) or 0)


def is_complete(connection: redis.Redis) -> bool:
    """Say whether every lead is indexed (the backfill ran, or the store began with the index)."""
    return bool(connection.exists(INDEXED_KEY))


# --- query parameters (shared by GET /leads, /dashboard/leads and `pruner leads`) -------------

DEFAULT_LIMIT = 50
QUERY_PARAMETERS = (
    *("crm", "state", "rule", "reason", "source", "segment", "priority", "stage", "outcome"),
    *("since", "until", "cursor", "limit"),
)
STATES = FIXED_VALUES["state"]
OUTCOMES = FIXED_VALUES["outcome"]
CRMS = FIXED_VALUES["crm"]
MAX_VALUE_LENGTH = 200


class QueryError(PrunerError, ValueError):
    """A list query parameter is wrong: `parameter` names it, the message says why in a sentence."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter


@dataclass(frozen=True)
class Query:
    filters: Filters
    limit: int
    cursor: str | None


def parse_query(params: Mapping[str, str]) -> Query:
    """Check a list query's parameters (all optional; empty means not given); QueryError names the bad one."""
    unknown = sorted(set(params) - set(QUERY_PARAMETERS))
    if unknown:
        raise QueryError(unknown[0], f"unknown parameter {unknown[0]!r:.60}; known: {', '.join(QUERY_PARAMETERS)}")
    given = {k: v.strip() for k, v in params.items() if v.strip()}
    for name, value in given.items():
        if len(value) > MAX_VALUE_LENGTH:
            raise QueryError(name, f"{name} is longer than {MAX_VALUE_LENGTH} characters")
    choices = {"crm": CRMS, "state": STATES, "outcome": OUTCOMES}
    for name, allowed in choices.items():
        if name in given and given[name] not in allowed:
            raise QueryError(name, f"{name} must be one of {', '.join(allowed)}, got {given[name]!r:.60}")
    times: dict[str, int] = {}
    for name in ("since", "until"):
        if name in given:
            try:
                times[name] = parse_rfc3339_ms(given[name], name)
            except SchemaError:
                raise QueryError(
                    name, f"{name} must be an RFC 3339 time such as 2026-11-20T10:00:00Z, got {given[name]!r:.60}"
                ) from None
    limit = DEFAULT_LIMIT
    if "limit" in given:
        text = given["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise QueryError("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r:.60}")
        limit = int(text)
    cursor = given.get("cursor")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            raise QueryError("cursor", "cursor is not one this server handed out: pass next_cursor as given") from None
    filters = Filters(
        crm=given.get("crm"),
        state=given.get("state"),
        reason=given.get("reason"),
        rule=given.get("rule"),
        source=given.get("source"),
        segment=given.get("segment"),
        priority=given.get("priority"),
        stage=given.get("stage"),
        outcome=given.get("outcome"),
        since_ms=times.get("since"),
        # `until` is exclusive (a day's list runs from its midnight to the next); scores are whole ms.
        until_ms=times["until"] - 1 if "until" in times else None,
    )
    return Query(filters, limit, cursor)
