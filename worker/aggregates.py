"""Loss / conversion aggregates kept up to date as leads change (`pruner stats`, the dashboard).

Each lead counts in the aggregates through one small row — its outcome, source,
segment, priority, loss reason, deal stage and the state it was lost from — kept in its
checkpoint. When an evaluation changes the row, the store moves the lead's counts from
the old row's fields to the new one's, in the same transaction as the state change
(`queue_delta`), so the aggregates hash is always the sum of the rows and reading it
costs the number of distinct values, not the number of leads.

Only counts are kept: no lead id, no personal data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rules.counters import LeadCounters
from rules.states import Decision, State, outcome_of

AGGREGATES_KEY = "pruner:stats:aggregates"  # hash: field (see `fields`) -> leads
# Set once every lead's row is in the aggregates (a store from before them is migrated first).
COMPLETE_KEY = "pruner:stats:complete"
SEP = "\x1f"  # between the parts of a field: never in a source, segment or stage name
DIMENSIONS = ("source", "segment", "priority")

# outcome, source, segment, priority, loss reason, deal stage, lost from ("" when unknown)
Row = list[str]


def row_of(state: str, loss_reason: str | None, counters: LeadCounters, lost_from: str | None) -> Row:
    return [
        outcome_of(state),
        counters.source or "(unknown)",
        counters.segment or "(unknown)",
        counters.priority or "(unknown)",
        loss_reason or "",
        counters.deal_stage or "",
        lost_from or "",
    ]


def lost_from(decisions: Sequence[Decision]) -> str | None:
    """The state the lead was last lost from (None: never lost, as far as these decisions go)."""
    lost = next((d for d in reversed(decisions) if d.to is State.LOST), None)
    return lost.source.value if lost else None


def fields(row: Row) -> list[str]:
    """The aggregate fields one lead counts in."""
    outcome, source, segment, priority, reason, stage, lost = row
    out = ["leads", f"outcome{SEP}{outcome}"]
    for dim, value in zip(DIMENSIONS, (source, segment, priority), strict=True):
        out.append(f"by{SEP}{dim}{SEP}{value}{SEP}{outcome}")
        if outcome == "lost" and reason:
            out.append(f"by{SEP}{dim}{SEP}{value}{SEP}reason:{reason}")
    if outcome == "lost":
        out += [f"reason{SEP}{reason or '(none)'}", f"stage{SEP}{stage or '(no deal)'}"]
        out.append(f"from{SEP}{lost or '(unknown)'}")
    return out


def queue_delta(pipe: Any, old: Row | None, new: Row | None) -> None:
    """Move one lead's counts from `old` to `new` (either None: not counted) on `pipe`."""
    if old == new:
        return
    delta: dict[str, int] = {}
    for f in fields(old) if old else ():
        delta[f] = delta.get(f, 0) - 1
    for f in fields(new) if new else ():
        delta[f] = delta.get(f, 0) + 1
    for f, n in delta.items():
        if n:
            pipe.hincrby(AGGREGATES_KEY, f, n)
