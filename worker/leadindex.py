"""The lead list index: `GET /leads`, `pruner leads` and the dashboard's live numbers.

Listing leads must not scan every lead, so each listed lead has one small index entry,
written in the same Redis transaction as its state record (worker/store.py calls
`queue_update` with the entry it read before MULTI and the one it computed):

    leads:v2:entries                hash {c}{lead_id} -> entry (msgpack: state, changed time, rules, loss
                                    reason, source, deal stage, segment, priority; no personal data)
    leads:v2:by:state:{state}       sorted set {c}{lead_id} -> changed time (ms), one per state
    leads:v2:by:rules:{a,b,...}     the same, one per combination of rules that decided (a lead's
                                    rules, sorted, comma-joined: each lead is in one of them)
    leads:v2:by:reason:{reason}     the same, one per loss reason (leads that have one)
    leads:v2:by:source:{source}     the same, one per source (leads that have one)
    leads:v2:values:{reason|rules}  the loss reasons and rule combinations ever seen
    leads:v2:indexed                set once every stored lead is in the index (worker/reindex.py)
    leads:tracked                   how many leads have an event log (listed or not)

{c} is the CRM's letter (h, s). Listed are the leads a rule has decided on (they have a state
record) and won leads: the ones an operator looks for. A lead that is merely being worked
(ACTIVE, never decided on, no won deal: most leads) costs the index nothing but its share of
`leads:tracked`; it is listed from its first decision on.

Memory is why the index is shaped so (issue #13): a sorted-set membership costs ~100-130 B
and a hash field ~80-190 B, so a listed lead is in at most four sets (its state, its rules,
its loss reason, its source) and its entry stores known words (states, rule names, loss
reasons) as one-byte codes: ~300-400 B a listed lead. The index of the versions before had a
set for every lead, one per outcome and one per rule, and JSON entries: ~1 KB. Its keys
(`leads:entries`, `leads:by:*`, `leads:values:*`, `leads:indexed`) are deleted once, by the
first worker to start (worker/reindex.py), which then indexes every lead anew.

A page reads newest first the sets of the filter that holds the fewest leads (ZCARD): the
one set of a state, a loss reason or a source; the state sets of an outcome (two at most),
or all six when nothing is filtered; the combinations that hold a rule. Several sets are
merged on the way, by time then member, both descending, which is the order one sorted set
holding them all would have: the cursor (a time and how many leads at that time were seen)
means the same whichever sets a page reads. The other filters (crm, segment, priority,
stage too) are checked against the entries: a page with one filter costs O(page); with
several, the scan is bounded and the cursor carries on where it stopped. The dashboard's
counts are sums of ZCARD/ZCOUNT over the same sets.

"changed" is the time of the lead's latest decision (the decision's own time, which is
event time), or of its first event for a won lead no rule has decided on.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any

import msgspec
import redis

from rules.counters import LeadCounters, LoggedEvent, fold
from rules.errors import PrunerError, SchemaError
from rules.events import EventType, format_ms, parse_rfc3339_ms
from rules.states import outcome_of

PREFIX = "pruner:leads:v2:"
ENTRIES_KEY = PREFIX + "entries"
BY_PREFIX = PREFIX + "by:"
VALUES_PREFIX = PREFIX + "values:"
INDEXED_KEY = PREFIX + "indexed"
TRACKED_KEY = "pruner:leads:tracked"
# The index of the versions before (one set for every lead, per outcome, per rule; JSON entries
# under "{crm}:{lead_id}"): nothing reads it, worker/reindex.py deletes it once.
LEGACY_INDEXED_KEY = "pruner:leads:indexed"
LEGACY_ENTRIES_KEY = "pruner:leads:entries"
LEGACY_PATTERNS = ("pruner:leads:by:*", "pruner:leads:values:*")
DIMENSIONS = ("crm", "state", "reason", "rule", "source", "segment", "priority", "stage", "outcome")
# The dimensions whose values are remembered: the policy's own words (rule names, loss reasons),
# never CRM free text, so nothing of an erased lead can linger there. "rules": the combinations.
VOCABULARIES = ("reason", "rules")
FIXED_VALUES = {
    "crm": ("hubspot", "salesforce"),
    "state": ("ACTIVE", "BREAKUP_DUE", "LOST", "REENGAGE_DUE", "WON", "SUPPRESSED"),
    "outcome": ("open", "won", "lost", "suppressed"),
}
# A member is the CRM's letter and the lead id (a new CRM needs a letter of its own here).
CRM_LETTERS = {"hubspot": "h", "salesforce": "s"}
_CRM_OF_LETTER = {letter: crm for crm, letter in CRM_LETTERS.items()}
# Words an entry stores as their position here (one byte): states, rule names, loss reasons.
# Append only: a stored code keeps its meaning. Any other word is stored as it is.
WORDS = (
    *FIXED_VALUES["state"],
    *("repeated_no", "decisive_no", "pushed_back", "unresponsive", "effort_exceeds_value", "proposal_expired"),
    *("call_cadence_exhausted", "breakup_grace", "reengage", "reply_resets", "consent_given", "do_not_contact"),
    *("erasure_requested", "reopened", "converted", "deal_won", "deal_opened"),
    *("not_interested", "no_response", "deprioritized", "budget", "competitor", "timing", "no_need"),
    *("authority", "other"),
)
_CODES = {word: i for i, word in enumerate(WORDS)}
# Events that can change an entry's source or deal stage; any other new event leaves them be.
PROFILE_TYPES = frozenset({EventType.LEAD_PROFILE, EventType.DEAL_UPDATED})
MAX_LIMIT = 500
# Entries checked per page at most when several filters are combined: the page may then
# come back short, with a cursor that carries on from where the scan stopped.
SCAN_BUDGET = 5_000
Lead = tuple[str, str]


def by_key(dimension: str, value: str) -> str:
    """The sorted set of one state, loss reason, source or rule combination ("rules", "a,b")."""
    return f"{BY_PREFIX}{dimension}:{value}"


def member(crm: str, lead_id: str) -> str:
    return CRM_LETTERS[crm] + lead_id


def lead_of(name: bytes | str) -> Lead:
    """The (crm, lead id) of a member made by `member`."""
    text = name.decode() if isinstance(name, bytes) else name
    return _CRM_OF_LETTER[text[0]], text[1:]


def combination(rules: Iterable[str]) -> str:
    """The name of the set of leads decided by exactly these rules ("" for none)."""
    return ",".join(sorted(rules))


def _code(word: str | None) -> int | str | None:
    return _CODES.get(word, word) if word is not None else None


def _word(stored: Any) -> Any:
    return WORDS[stored] if isinstance(stored, int) else stored


_PAD: list[Any] = [None] * 8


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
        """The values this entry has, per dimension (what filters match)."""
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

    def sets(self) -> set[str]:
        """The index's sorted sets this entry is in."""
        keys = {by_key("state", self.state)}
        if self.rules:
            keys.add(by_key("rules", combination(self.rules)))
        if self.loss_reason:
            keys.add(by_key("reason", self.loss_reason))
        if self.source:
            keys.add(by_key("source", self.source))
        return keys

    def encode(self) -> bytes:
        """msgpack, known words as codes, missing fields at the end left out (~20-40 bytes)."""
        fields: list[Any] = [
            _code(self.state),
            self.changed_ms,
            [_code(rule) for rule in self.rules],
            _code(self.loss_reason),
            self.source,
            self.deal_stage,
            self.segment,
            self.priority,
        ]
        while fields[-1] is None:
            fields.pop()
        return msgspec.msgpack.encode(fields)

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        stored: list[Any] = msgspec.msgpack.decode(raw)
        state, changed, rules, reason, source, stage, segment, priority = stored + _PAD[len(stored) :]
        return cls(_word(state), _word(reason), tuple(map(_word, rules)), source, stage, changed, segment, priority)


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

    Nothing is written when the entry did not change, which is what most batches see; a set
    the lead stays in at the same time is left alone.
    """
    if old == new:
        return
    name = member(*lead)
    before = old.sets() if old else set()
    after = new.sets() if new else set()
    for key in sorted(before - after):
        pipe.zrem(key, name)
    if new is None:
        pipe.hdel(ENTRIES_KEY, name)
        return
    pipe.hset(ENTRIES_KEY, name, new.encode())
    moved = old is None or old.changed_ms != new.changed_ms
    for key in sorted(after if moved else after - before):
        pipe.zadd(key, {name: new.changed_ms})
    if new.loss_reason and (old is None or old.loss_reason != new.loss_reason):
        pipe.sadd(VALUES_PREFIX + "reason", new.loss_reason)
    if new.rules and (old is None or old.rules != new.rules):
        pipe.sadd(VALUES_PREFIX + "rules", combination(new.rules))


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


STATE_SETS = tuple(by_key("state", state) for state in FIXED_VALUES["state"])


def _outcome_sets(outcome: str) -> list[str]:
    return [by_key("state", state) for state in FIXED_VALUES["state"] if outcome_of(state) == outcome]


def _combinations(connection: redis.Redis) -> list[str]:
    return sorted(v.decode() for v in connection.smembers(VALUES_PREFIX + "rules"))  # type: ignore[union-attr]


def _rule_sets(combinations: Iterable[str], rule: str) -> list[str]:
    return [by_key("rules", c) for c in combinations if rule in c.split(",")]


def _driving(connection: redis.Redis, filters: Filters) -> tuple[list[str], list[int]]:
    """The sets a page reads (those of the filter holding the fewest leads) and their sizes; none: no lead matches."""
    groups: list[list[str]] = []
    if filters.state is not None:
        groups.append([by_key("state", filters.state)])
    if filters.outcome is not None:
        groups.append(_outcome_sets(filters.outcome))
    for dim in ("reason", "source"):
        if (value := getattr(filters, dim)) is not None:
            groups.append([by_key(dim, value)])
    if filters.rule is not None:
        groups.append(_rule_sets(_combinations(connection), filters.rule))
    if not groups:
        groups.append(list(STATE_SETS))
    if not all(groups):
        return [], []  # an outcome or a rule no lead has
    with connection.pipeline(transaction=False) as pipe:
        for group in groups:
            for key in group:
                pipe.zcard(key)
        found: list[int] = pipe.execute()
    sized: list[tuple[int, list[tuple[str, int]]]] = []
    for group in groups:
        sizes, found = found[: len(group)], found[len(group) :]
        sized.append((sum(sizes), [(k, n) for k, n in zip(group, sizes, strict=True) if n]))
    _, chosen = min(sized, key=lambda t: t[0])
    return [k for k, _ in chosen], [n for _, n in chosen]


Scored = tuple[bytes, float]


def _newest_first(
    connection: redis.Redis,
    keys: Sequence[str],
    sizes: Sequence[int],
    high: int | str,
    low: int | str,
    skip: int,
    chunk: int,
) -> Iterator[Scored]:
    """The members of the sorted sets `keys` (none in two of them) from `high` down to `low`, as
    one set holding them all would give them (by score, then member, both descending), the first
    `skip` left out. Each set is read a batch at a time, the first batches in one round trip, sized
    by each set's share of the leads."""
    if len(keys) == 1:
        yield from _read_down(connection, keys[0], high, low, skip, chunk, chunk, None)
        return
    want, total = skip + chunk, sum(sizes)
    firsts = [min(want, want * size // total + 8) for size in sizes]
    with connection.pipeline(transaction=False) as pipe:
        for key, n in zip(keys, firsts, strict=True):
            pipe.zrevrangebyscore(key, high, low, start=0, num=n, withscores=True)
        batches: list[list[Scored]] = pipe.execute()
    streams = [
        _read_down(connection, key, high, low, 0, n, chunk, batch)
        for key, n, batch in zip(keys, firsts, batches, strict=True)
    ]
    yield from islice(heapq.merge(*streams, key=_position, reverse=True), skip, None)


def _position(item: Scored) -> tuple[float, bytes]:
    return item[1], item[0]


def _read_down(
    connection: redis.Redis,
    key: str,
    high: int | str,
    low: int | str,
    skip: int,
    size: int,
    chunk: int,
    batch: list[Scored] | None,
) -> Iterator[Scored]:
    """One set's members from `high` down (the first `skip` at `high` left out): `size` of them,
    then at least a page's `chunk` and twice as many each time; `batch`: the first, already read.
    (A set that outran its share of a page is the one the page is reading: a round trip each
    for the rest of it would cost more than the members read ahead.)"""
    while True:
        if batch is None:
            batch = connection.zrevrangebyscore(  # type: ignore[assignment]
                key, high, low, start=skip, num=size, withscores=True
            )
            assert batch is not None
        yield from batch
        if len(batch) < size:
            return
        for _, score in batch:  # the position after this batch, counted as the page's cursor is
            at = int(score)
            skip = skip + 1 if at == high else 1
            high = at
        batch, size = None, min(max(size * 2, chunk), MAX_LIMIT)


def page(connection: redis.Redis, filters: Filters, limit: int, cursor: str | None = None) -> Page:
    """Return up to `limit` leads matching `filters`, newest change first, and the cursor after them."""
    keys, sizes = _driving(connection, filters)
    if not keys:
        return Page()
    top, seen = decode_cursor(cursor) if cursor else (filters.until_ms, 0)
    high: int | str = "+inf" if top is None else top
    low: int | str = "-inf" if filters.since_ms is None else filters.since_ms
    out = Page()
    checked = 0
    chunk = min(max(limit * 2, 50), MAX_LIMIT)
    stream = _newest_first(connection, keys, sizes, high, low, seen, chunk)
    while True:
        raw = list(islice(stream, chunk))
        if not raw:
            return out
        entries: list[bytes | None] = connection.hmget(ENTRIES_KEY, [m for m, _ in raw])  # type: ignore[assignment]
        for (name, score), blob in zip(raw, entries, strict=True):
            at = int(score)
            # Position after this lead: ties at one time are told apart by how many were seen.
            seen = seen + 1 if at == high else 1
            high = at
            checked += 1
            if blob is None:
                continue  # erased or forgotten between the two reads
            crm, lead_id = lead_of(name)
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


def _value_sets(connection: redis.Redis, dimension: str) -> dict[str, list[str]]:
    """The sets holding the leads of each value of `dimension` (none: not counted, checked on entries)."""
    if dimension == "state":
        return {state: [by_key("state", state)] for state in FIXED_VALUES["state"]}
    if dimension == "outcome":
        return {outcome: _outcome_sets(outcome) for outcome in FIXED_VALUES["outcome"]}
    if dimension == "rule":
        combinations = _combinations(connection)
        rules = sorted({rule for c in combinations for rule in c.split(",")})
        return {rule: _rule_sets(combinations, rule) for rule in rules}
    if dimension == "reason":
        reasons = sorted(v.decode() for v in connection.smembers(VALUES_PREFIX + "reason"))  # type: ignore[union-attr]
        return {reason: [by_key("reason", reason)] for reason in reasons}
    return {}


def counts(connection: redis.Redis, dimension: str, since_ms: int | None = None) -> dict[str, int]:
    """Return how many listed leads have each value of `dimension` (changed since `since_ms`)."""
    return _count(connection, _value_sets(connection, dimension), [(None if since_ms is None else since_ms, None)])[0]


def per_day(
    connection: redis.Redis, dimension: str, values: Sequence[str], days: Sequence[tuple[str, int, int]]
) -> list[tuple[str, dict[str, int]]]:
    """Count leads per day and value, by changed time; `days` are (label, start ms, end ms)."""
    known = _value_sets(connection, dimension)
    sets = {value: known.get(value, []) for value in values}
    found = _count(connection, sets, [(start, end) for _, start, end in days])
    return [(label, row) for (label, _, _), row in zip(days, found, strict=True)]


def _count(
    connection: redis.Redis, sets: Mapping[str, Sequence[str]], spans: Sequence[tuple[int | None, int | None]]
) -> list[dict[str, int]]:
    """Per span [start, end), the leads of each value in `sets` (one pipeline); values with none left out."""
    with connection.pipeline(transaction=False) as pipe:
        for start, end in spans:
            for keys in sets.values():
                for key in keys:
                    if start is None and end is None:
                        pipe.zcard(key)
                    else:
                        pipe.zcount(key, "-inf" if start is None else start, "+inf" if end is None else f"({end}")
        found: list[int] = pipe.execute()
    out: list[dict[str, int]] = []
    for _ in spans:
        row: dict[str, int] = {}
        for value, keys in sets.items():
            n, found = sum(found[: len(keys)]), found[len(keys) :]
            if n:
                row[value] = n
        out.append(row)
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
