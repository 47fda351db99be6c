"""What the dashboard shows, read from Redis: queue tiles, decision counts, the loss analytics snapshot.

No Flask here: webhooks/dashboard.py renders these, and tests read them without an app.
Only aggregates: no lead id, no personal data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue

from webhooks.charts import MAX_ROWS, OTHER_COLOR, PALETTE, STATE_COLORS
from worker import leadquery, queuehealth
from worker import metrics as worker_metrics
from worker.stats import DIMENSIONS, STATS_SNAPSHOT_KEY, collect, store_stats_snapshot

DAYS = 30


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    note: str = ""
    level: str = "ok"  # ok | warn | bad | info
    href: str = ""  # the lead list behind the number


def queue_health(connection: redis.Redis, queue: Queue, now: float) -> list[Tile]:
    """Queue depth, failures, workers and lag as tiles: the same reading as `/metrics` (worker/queuehealth.py)."""
    health = queuehealth.read(connection, queue, now)
    failed, workers, queued, oldest = health.failed, health.workers, health.queued, health.oldest_wait_s
    lag = health.last_batch
    last_at = lag.get("at")
    return [
        Tile("Queued", f"{queued:,}", "jobs waiting", "warn" if queued and not workers else "ok"),
        Tile("Started", f"{health.started:,}", "jobs running"),
        Tile("Scheduled", f"{health.scheduled:,}", "retries and delayed jobs", "info"),
        Tile("Failed", f"{failed:,}", "run `pruner replay --failed`" if failed else "none", "bad" if failed else "ok"),
        Tile("Workers", f"{workers}", "listening on the queue", "ok" if workers else "bad"),
        Tile("Oldest job waiting", duration(oldest), "0 s when the queue is empty", _lag_level(oldest)),
        Tile(
            "Last batch: queue lag",
            duration(lag["queue_seconds"]) if "queue_seconds" in lag else "–",
            f"processed {duration(now - last_at)} ago" if last_at else "no batch yet",
            _lag_level(lag.get("queue_seconds", 0.0)),
        ),
        Tile(
            "Last batch: event age",
            duration(lag["event_seconds"]) if "event_seconds" in lag else "–",
            "newest event's time to processing",
            "info",
        ),
        _reconciled(connection),
    ]


def _reconciled(connection: redis.Redis) -> Tile:
    """Events reconciliation found that no webhook had delivered (worker/reconcile.py): above 0, look."""
    raw: dict[bytes, bytes] = connection.hgetall(worker_metrics.RECONCILED_KEY)  # type: ignore[assignment]
    total = sum(int(v) for v in raw.values())
    note = "webhooks are missing events: check the subscriptions" if total else "every webhook arrived"
    return Tile("Recovered by reconciliation", f"{total:,}", note, "warn" if total else "ok")


def _lag_level(seconds: float) -> str:
    return "bad" if seconds > 300 else "warn" if seconds > 30 else "ok"


def duration(seconds: float) -> str:
    """Format a duration for people: `0.4 s`, `42 s`, `3 min`, `5.2 h`, `3 d`."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} d"


def load_stats(connection: redis.Redis, now: float) -> tuple[dict[str, Any], float, bool]:
    """Return the stats, when they were computed, and whether they came from the clock's snapshot."""
    raw = connection.get(STATS_SNAPSHOT_KEY)
    if raw:
        try:
            snapshot = json.loads(raw)
            at = datetime.fromisoformat(snapshot["computed_at"].replace("Z", "+00:00")).timestamp()
            return dict(snapshot["stats"]), at, True
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable snapshot is no worse than none: compute below
    return collect(connection).to_json(), now, False


def decisions_by_rule(connection: redis.Redis) -> list[tuple[str, dict[str, int]]]:
    """Return decision counts per rule, by target state, from the workers' aggregate hash."""
    raw: dict[bytes, bytes] = connection.hgetall(worker_metrics.DECISIONS_KEY)  # type: ignore[assignment]
    rules: dict[str, dict[str, int]] = {}
    for field, count in raw.items():
        parts = field.decode().split("|")
        if len(parts) == 3:
            by_state = rules.setdefault(parts[0], {})
            by_state[parts[1]] = by_state.get(parts[1], 0) + int(count)
    return list(rules.items())


def daily_decisions(connection: redis.Redis, now: float, days: int = DAYS) -> list[tuple[str, dict[str, int]]]:
    """Return decisions per UTC day (oldest first), by target state, from the workers' daily hashes."""
    today = datetime.fromtimestamp(now, tz=UTC).date()
    dates = [(today - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for day in dates:
            pipe.hgetall(worker_metrics.DAILY_PREFIX + day)
        hashes: list[dict[bytes, bytes]] = pipe.execute()
    result = []
    for day, fields in zip(dates, hashes, strict=True):
        by_state: dict[str, int] = {}
        for field, count in fields.items():
            to = field.decode().split("|", 1)[0]
            by_state[to] = by_state.get(to, 0) + int(count)
        result.append((day, by_state))
    return result


def fold(rows: list[tuple[str, dict[str, int]]], limit: int = MAX_ROWS) -> list[tuple[str, dict[str, int]]]:
    """Keep the `limit - 1` biggest rows and sum the rest into "(other)"."""
    rows = sorted(rows, key=lambda r: (-sum(r[1].values()), r[0]))
    if len(rows) <= limit:
        return rows
    other: dict[str, int] = {}
    for _, values in rows[limit - 1 :]:
        for k, v in values.items():
            other[k] = other.get(k, 0) + v
    return rows[: limit - 1] + [("(other)", other)]


def reason_colors(stats: Mapping[str, Any]) -> dict[str, str]:
    """Give each loss reason one colour on every chart, the most frequent first."""
    reasons = list(stats.get("loss_reasons", {}))
    for dim in DIMENSIONS:
        for row in stats.get("by", {}).get(dim, {}).values():
            reasons += [r for r in row.get("reasons", {}) if r not in reasons]
    return {r: PALETTE[i] if i < len(PALETTE) else OTHER_COLOR for i, r in enumerate(reasons)}


# Below this many leads a snapshot that disagrees with the live index is recomputed on the
# spot (a SCAN of that size takes well under a second); above, the clock's snapshot serves.
LIVE_RECOMPUTE_MAX = 20_000
RECOMPUTE_SECONDS = 15
DAY_MS = 86_400_000


def iso_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decision_days(connection: redis.Redis, now: float, days: int) -> list[tuple[str, dict[str, int]]]:
    """Leads per UTC day of their latest decision (its own time), by the state it moved them to."""
    today = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = int(today.timestamp() * 1000) - (days - 1) * DAY_MS
    spans = [(iso_day(first + i * DAY_MS)[:10], first + i * DAY_MS, first + (i + 1) * DAY_MS) for i in range(days)]
    # ACTIVE is left out: most ACTIVE leads were never decided on (their time is their first event's).
    decided = [state for state in STATE_COLORS if state != "ACTIVE"]
    return leadquery.per_day(connection, "state", decided, spans)


def _snapshot_author(connection: redis.Redis) -> str | None:
    """Who stored the stats snapshot: "clock" (its job), "dashboard" (a page that found it behind)."""
    try:
        return str(json.loads(connection.get(STATS_SNAPSHOT_KEY) or b"{}").get("by"))
    except (ValueError, AttributeError):
        return None


def fresh_stats(connection: redis.Redis, now: float, live_total: int | None) -> tuple[dict[str, Any], float, bool]:
    """The detail charts' stats: the clock's snapshot, recomputed now when it disagrees with the live index."""
    stats, as_of, from_snapshot = load_stats(connection, now)
    behind = live_total is not None and from_snapshot and int(stats.get("leads", 0)) != live_total
    # Stored as the snapshot, and redone by a page at most every RECOMPUTE_SECONDS: a page
    # reloading every minute (or a count a lead off after a backfill raced a worker) does not
    # rescan on every view. A clock's snapshot that is behind is redone at once.
    by_page = behind and _snapshot_author(connection) == "dashboard"
    small = live_total is not None and live_total <= LIVE_RECOMPUTE_MAX
    if behind and small and (not by_page or now - as_of > RECOMPUTE_SECONDS):
        snapshot = store_stats_snapshot(connection, by="dashboard")
        return dict(snapshot["stats"]), now, False
    return stats, as_of, from_snapshot
