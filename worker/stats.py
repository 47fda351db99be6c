"""`pruner stats`: loss and conversion by source, segment, priority and reason (aggregates only).

Seeds 001 and 002: lost leads are data. The counts are kept up to date as leads
change (worker/aggregates.py), so `collect` reads one hash: its cost is the number of
distinct sources, segments, reasons..., not the number of leads. A store written before
the aggregates is scanned (every log, every state) until `migrate` has counted every
lead in them, once. Only counts leave this module — no lead ids, no personal data.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worker import eventlog, staterecord
from worker.aggregates import (
    AGGREGATES_KEY,
    COMPLETE_KEY,
    DIMENSIONS,
    SEP,
    Row,
    fields,
    row_of,
)
from worker.checkpoint import unpack
from worker.keys import PREFIX, STATE_PREFIX, checkpoint_key, parse_due_member

__all__ = ["DIMENSIONS", "Stats", "collect", "format_text", "scan"]


def _groups() -> dict[str, dict[str, Counter[str]]]:
    return {d: defaultdict(Counter) for d in DIMENSIONS}


@dataclass
class Stats:
    leads: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    loss_reasons: Counter[str] = field(default_factory=Counter)
    by: dict[str, dict[str, Counter[str]]] = field(
        default_factory=lambda: {d: defaultdict(Counter) for d in DIMENSIONS}
    )
    lost_at_stage: Counter[str] = field(default_factory=Counter)
    lost_from_state: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        def rates(c: Counter[str]) -> dict[str, Any]:
            total = sum(v for k, v in c.items() if not k.startswith("reason:"))
            return {
                "leads": total,
                "won": c["won"],
                "lost": c["lost"],
                "loss_rate": round(c["lost"] / total, 4) if total else 0.0,
                "conversion_rate": round(c["won"] / total, 4) if total else 0.0,
                "reasons": {k[7:]: v for k, v in sorted(c.items()) if k.startswith("reason:")},
            }

        return {
            "leads": self.leads,
            "outcomes": dict(self.outcomes.most_common()),
            "loss_reasons": dict(self.loss_reasons.most_common()),
            "by": {d: {value: rates(c) for value, c in sorted(groups.items())} for d, groups in self.by.items()},
            "lost_at_deal_stage": dict(self.lost_at_stage.most_common()),
            "lost_from_state": dict(self.lost_from_state.most_common()),
        }


def add_row(stats: Stats, row: Row, n: int = 1) -> None:
    """Count `n` leads of one aggregate row (worker/aggregates.py) in `stats`."""
    for f in fields(row):
        _add_field(stats, f, n)


def _add_field(stats: Stats, name: str, n: int) -> None:
    kind, _, rest = name.partition(SEP)
    if kind == "leads":
        stats.leads += n
    elif kind == "outcome":
        stats.outcomes[rest] += n
    elif kind == "by":
        dim, value, key = rest.split(SEP, 2)
        if dim in stats.by:
            stats.by[dim][value][key] += n
    elif kind == "reason":
        stats.loss_reasons[rest] += n
    elif kind == "stage":
        stats.lost_at_stage[rest] += n
    elif kind == "from":
        stats.lost_from_state[rest] += n


def collect(connection: redis.Redis, progress: Callable[[int], None] | None = None, batch: int = 500) -> Stats:
    """Aggregate every tracked lead: read the aggregates, or scan every lead before they are complete."""
    if connection.exists(COMPLETE_KEY):
        return from_aggregates(connection)
    return scan(connection, progress, batch)


def from_aggregates(connection: redis.Redis) -> Stats:
    """The aggregates hash as `Stats`: one HGETALL, as long as there are distinct values, whatever the leads."""
    stats = Stats()
    raw: dict[bytes, bytes] = connection.hgetall(AGGREGATES_KEY)  # type: ignore[assignment]
    for name, value in raw.items():
        n = int(value)
        if n:
            _add_field(stats, name.decode(), n)
    for groups in stats.by.values():
        for gone in [v for v, c in groups.items() if not +c]:  # values no lead has any more
            del groups[gone]
    return stats


def scan(connection: redis.Redis, progress: Callable[[int], None] | None = None, batch: int = 500) -> Stats:
    """Aggregate every tracked lead from its log and state (SCAN): the cost grows with the leads."""
    stats = Stats()

    def flush(keys: list[bytes]) -> None:
        logs: list[bytes | None] = connection.mget(keys)  # type: ignore[assignment]
        state_keys = [STATE_PREFIX + k.decode()[len(PREFIX) :] for k in keys]
        states: list[bytes | None] = connection.mget(state_keys)  # type: ignore[assignment]
        for blob, raw_state in zip(logs, states, strict=True):
            if blob is None:
                continue
            counters = eventlog.read(blob).counters()
            record = staterecord.decode(raw_state) if raw_state else {}
            lost = next((d for d in reversed(record.get("decisions", [])) if d.get("to") == "LOST"), None)
            row = row_of(record.get("state", "ACTIVE"), record.get("loss_reason"), counters, lost and lost["from"])
            add_row(stats, row)
        if progress:
            progress(len(keys))

    _each_chunk_of_leads(connection, batch, flush)
    return stats


def _each_chunk_of_leads(connection: redis.Redis, batch: int, flush: Callable[[list[bytes]], None]) -> None:
    """Call `flush` with the lead log keys, `batch` at a time (SCAN)."""
    keys: list[bytes] = []
    for key in connection.scan_iter(f"{PREFIX}*", count=batch):
        keys.append(key)
        if len(keys) >= batch:
            flush(keys)
            keys = []
    if keys:
        flush(keys)


def migrate(connection: redis.Redis, reevaluate: Callable[[list[tuple[str, str]]], object], batch: int = 500) -> int:
    """Count every lead written before the aggregates in them, once; then mark them complete.

    A lead without a row in its checkpoint (not evaluated since the upgrade) is re-evaluated
    (`reevaluate`: the sweep's `LeadStore.reevaluate` with a decider), which writes its
    checkpoint and adds its row in the same transaction; a lead touched by a batch meanwhile
    has its row already and is skipped. Returns the leads migrated.
    """
    done = 0

    def flush(keys: list[bytes]) -> None:
        nonlocal done
        leads = [parse_due_member(k.decode()[len(PREFIX) :]) for k in keys]
        raw: list[bytes | None] = connection.mget([checkpoint_key(*lead) for lead in leads])  # type: ignore[assignment]
        todo = [lead for lead, blob in zip(leads, raw, strict=True) if (ck := unpack(blob)) is None or ck.row is None]
        if todo:
            reevaluate(todo)
        done += len(todo)

    _each_chunk_of_leads(connection, batch, flush)
    connection.set(COMPLETE_KEY, "1")
    return done


def format_text(stats: Stats) -> str:
    data = stats.to_json()
    lines = [f"{data['leads']} leads: " + ", ".join(f"{k} {v}" for k, v in data["outcomes"].items())]
    lines.append("loss reasons: " + (", ".join(f"{k} {v}" for k, v in data["loss_reasons"].items()) or "none"))
    for dim in DIMENSIONS:
        lines.append(f"\nby {dim}:")
        lines.append(f"  {'value':<24} {'leads':>7} {'won':>6} {'lost':>6} {'conv%':>7} {'loss%':>7}  top reason")
        for value, row in data["by"][dim].items():
            top = max(row["reasons"].items(), key=lambda kv: kv[1])[0] if row["reasons"] else "-"
            lines.append(
                f"  {value[:24]:<24} {row['leads']:>7} {row['won']:>6} {row['lost']:>6} "
                f"{row['conversion_rate'] * 100:>6.1f}% {row['loss_rate'] * 100:>6.1f}%  {top}"
            )
    lines.append(
        "\nwhere lost leads died (deal stage): "
        + (", ".join(f"{k} {v}" for k, v in data["lost_at_deal_stage"].items()) or "none")
    )
    lines.append("lost from state: " + (", ".join(f"{k} {v}" for k, v in data["lost_from_state"].items()) or "none"))
    return "\n".join(lines)


STATS_SNAPSHOT_KEY = "pruner:stats:snapshot"  # JSON: {"computed_at", "seconds", "stats"} for /dashboard


def store_stats_snapshot(connection: redis.Redis, by: str = "clock") -> dict[str, Any]:
    """Compute `pruner stats` aggregates and store them as the dashboard's snapshot (`by`: who asked)."""
    started = time.time()
    stats = collect(connection)
    snapshot = {
        "computed_at": datetime.fromtimestamp(started, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seconds": round(time.time() - started, 3),
        "stats": stats.to_json(),
        "by": by,
    }
    connection.set(STATS_SNAPSHOT_KEY, json.dumps(snapshot))
    return snapshot
