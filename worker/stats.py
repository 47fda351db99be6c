"""`pruner stats`: loss and conversion by source, segment, priority and reason (aggregates only).

Seeds 001 and 002: lost leads are data. This walks every tracked lead (SCAN, in
batches of a few hundred keys: one MGET each for logs and states), so its cost
grows with the number of leads; it is an operator's report, not a hot path.
Only counts leave this module — no lead ids, no personal data.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from rules.counters import fold
from worker import eventlog
from worker.store import PREFIX, STATE_PREFIX

WON_STAGES = frozenset({"closedwon", "closed won"})
DIMENSIONS = ("source", "segment", "priority")


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


def outcome_of(state: str, deal_stage: str | None) -> str:
    if deal_stage and deal_stage.strip().lower() in WON_STAGES:
        return "won"
    return {"LOST": "lost", "REENGAGE_DUE": "lost", "SUPPRESSED": "suppressed"}.get(state, "open")


def collect(connection: redis.Redis, progress: Callable[[int], None] | None = None, batch: int = 500) -> Stats:
    """Aggregate every tracked lead."""
    stats = Stats()
    keys: list[bytes] = []

    def flush() -> None:
        logs: list[bytes | None] = connection.mget(keys)  # type: ignore[assignment]
        state_keys = [STATE_PREFIX + k.decode()[len(PREFIX) :] for k in keys]
        states: list[bytes | None] = connection.mget(state_keys)  # type: ignore[assignment]
        for blob, raw_state in zip(logs, states, strict=True):
            if blob is None:
                continue
            counters = fold(eventlog.decode(blob))
            record = json.loads(raw_state) if raw_state else {}
            state = record.get("state", "ACTIVE")
            outcome = outcome_of(state, counters.deal_stage)
            stats.leads += 1
            stats.outcomes[outcome] += 1
            reason = record.get("loss_reason")
            for dim in DIMENSIONS:
                value = getattr(counters, dim) or "(unknown)"
                stats.by[dim][value][outcome] += 1
                if outcome == "lost" and reason:
                    stats.by[dim][value][f"reason:{reason}"] += 1
            if outcome == "lost":
                stats.loss_reasons[reason or "(none)"] += 1
                stats.lost_at_stage[counters.deal_stage or "(no deal)"] += 1
                lost = next((d for d in reversed(record.get("decisions", [])) if d.get("to") == "LOST"), None)
                stats.lost_from_state[lost["from"] if lost else "(unknown)"] += 1
        if progress:
            progress(len(keys))
        keys.clear()

    for key in connection.scan_iter(f"{PREFIX}*", count=batch):
        keys.append(key)
        if len(keys) >= batch:
            flush()
    if keys:
        flush()
    return stats


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
