"""Stats benchmark: `pruner stats` / the dashboard's aggregates, against the number of leads (issue #13).

Leads are created through the store with the worker's decider (a profile with one of a
few sources, segments and priorities, and for one lead in three two "not interested"
that lose it), so the aggregates are kept as in production. Then, at each size, interleaved:
`worker.stats.collect` (one HGETALL of the aggregates: the cost should not move with N)
and, up to --scan-max leads, the full scan it replaces (every log and state).

    PRUNER_TEST_REDIS=127.0.0.1:6396 .venv/bin/python -m bench.stats [--sizes 10000 50000 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from bench.common import REDIS_URL, bench_db, load_note
from rules.events import Crm, Event, EventType
from worker.aggregates import COMPLETE_KEY
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.stats import collect, scan
from worker.store import LeadStore

SOURCES = ("Web", "Ads", "Referral", "Event", "Partner")
SEGMENTS = ("SMB", "Mid", "Enterprise")
PRIORITIES = ("Hot", "Warm", "Cold")
P = default_policy()


def grow(store: LeadStore, start: int, end: int, now_ms: int) -> None:
    """Create leads start..end-1 (1,000 per batch)."""
    for lo in range(start, end, 1000):
        events = []
        for i in range(lo, min(end, lo + 1000)):
            lead = f"L{i}"
            data = {"source": SOURCES[i % 5], "segment": SEGMENTS[i % 3], "priority": PRIORITIES[i % 7 % 3]}
            events.append(Event(f"p{i}", EventType.LEAD_PROFILE, Crm.HUBSPOT, lead, now_ms - 3_600_000, data))
            if i % 3 == 0:
                for k in (1, 2):
                    at = now_ms - 3_600_000 + k * 60_000
                    events.append(Event(f"n{i}-{k}", EventType.NOT_INTERESTED, Crm.HUBSPOT, lead, at, {}))
        store.apply_batch(events, Decider(P, now_ms, dry_run=True))


def timed(fn: object, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - started)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000])
    p.add_argument("--scan-max", type=int, default=50_000, help="largest size at which the full scan is timed")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print("== stats: aggregates read vs full scan, by number of leads ==")
    print(f"Redis: {REDIS_URL}; before: {load_note()}")
    now_ms = int(time.time() * 1000)
    print(f"{'leads':>9} {'collect ms (min/med/max)':>26} {'scan ms (median)':>17} {'leads counted':>14}")
    with bench_db() as conn:
        store = LeadStore(conn)
        conn.set(COMPLETE_KEY, "1")  # a store born with the aggregates: nothing to migrate
        have = 0
        for size in sorted(args.sizes):
            grow(store, have, size, now_ms)
            have = size
            fast = [s * 1000 for s in timed(lambda: collect(conn), args.rounds)]
            counted = collect(conn).leads
            assert counted == size, f"the aggregates count {counted} leads, not {size}"
            slow = "-"
            if size <= args.scan_max:
                assert scan(conn).to_json() == collect(conn).to_json(), "aggregates and scan disagree"
                slow = f"{statistics.median(timed(lambda: scan(conn), 1)) * 1000:,.0f}"
            spread = f"{min(fast):>8.2f} {statistics.median(fast):>8.2f} {max(fast):>8.2f}"
            print(f"{size:>9,} {spread} {slow:>17} {counted:>14,}", flush=True)
    print(f"after: {load_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
