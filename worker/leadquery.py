"""Reading the lead list index (worker/leadindex.py): pages newest first, counts, query parameters.

What `GET /leads`, the dashboard and `pruner leads` ask of the index; leadindex.py holds what
is written (entries, sets, their keys) in the state record's transaction. How a page picks and
merges sets is told in leadindex.py's docstring.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis

from rules.errors import PrunerError, SchemaError
from rules.events import format_ms, parse_rfc3339_ms
from rules.states import outcome_of
from worker.leadindex import (
    DIMENSIONS,
    ENTRIES_KEY,
    FIXED_VALUES,
    VALUES_PREFIX,
    Entry,
    by_key,
    lead_of,
)

MAX_LIMIT = 500
# Entries checked per page at most when several filters are combined: the page may then
# come back short, with a cursor that carries on from where the scan stopped.
SCAN_BUDGET = 5_000


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
