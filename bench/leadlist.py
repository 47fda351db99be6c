"""Benchmark the lead list: a page of `GET /leads` among many tracked leads costs O(page).

PRUNER_TEST_REDIS=127.0.0.1:6395 .venv/bin/python -m bench.leadlist [--leads 100000 20000] [--limit 50]

For each size, fills the list index with that many leads (one in ten LOST, a third of
those `no_response`, one in twenty REENGAGE_DUE, the rest ACTIVE after a reply; one to three
rules each; entries written by `worker.leadindex.queue_update`, as the store does) and
times, median of 20: the first page of LOST leads, the 20th page followed by cursor, a page
with three filters combined, and the dashboard's live counts; then pages 20 deep of every
listed lead, of the lost outcome (LOST and REENGAGE_DUE) and of one rule, and a page of the
lost outcome with a rule. Baseline, same run: a SCAN over the index entries, what a list
without sorted sets would at least pay. Uses Redis DB 13 only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

from bench.common import bench_redis, flush_bench_db
from worker import leadindex, leadquery
from worker.leadindex import Entry
from worker.leadquery import Filters

T0 = 1_772_442_000_000  # 2 March 2026
RULES = ("unresponsive", "repeated_no", "decisive_no", "breakup_grace")


def fill(conn: object, count: int) -> None:
    """Index `count` leads, a spread of states and reasons, one change per minute."""
    for start in range(0, count, 5_000):
        with conn.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            for i in range(start, min(start + 5_000, count)):
                lost, back = i % 10 == 0, i % 20 == 5
                reason = ("no_response", "competitor", "not_interested")[i // 10 % 3] if lost or back else None
                if lost:
                    rules: tuple[str, ...] = tuple(sorted({RULES[i % 4], RULES[i // 40 % 4]}))
                elif back:
                    rules = ("breakup_grace", "reengage", "unresponsive")
                else:
                    rules = ("reply_resets", "unresponsive") if i % 3 else ("pushed_back", "reply_resets")
                entry = Entry(
                    "LOST" if lost else "REENGAGE_DUE" if back else "ACTIVE",
                    reason,
                    rules,
                    ("webinar", "referral", "paid_search")[i % 3],
                    None,
                    T0 + i * 60_000,
                )
                leadindex.queue_update(pipe, ("hubspot", f"lead-{i}"), None, entry)
            pipe.execute()


def median_ms(run: Callable[[], object], repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def deep_page(conn: object, filters: Filters, limit: int, pages: int) -> list[leadquery.Row]:
    cursor = None
    rows: list[leadquery.Row] = []
    for _ in range(pages):
        found = leadquery.page(conn, filters, limit, cursor)  # type: ignore[arg-type]
        rows, cursor = found.rows, found.next_cursor
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.leadlist")
    p.add_argument("--leads", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--limit", type=int, default=50)
    args = p.parse_args(argv)
    conn = bench_redis()
    lost = Filters(state="LOST")
    combined = Filters(state="LOST", reason="no_response", source="webinar")
    wide = [("all", Filters()), ("lost", Filters(outcome="lost")), ("rule", Filters(rule="breakup_grace"))]
    lost_by_rule = Filters(outcome="lost", rule="reengage")
    try:
        for count in args.leads:
            flush_bench_db(conn)
            fill(conn, count)
            first = median_ms(lambda: leadquery.page(conn, lost, args.limit))
            twentieth = median_ms(lambda: deep_page(conn, lost, args.limit, 20), repeat=5) / 20
            three = median_ms(lambda: leadquery.page(conn, combined, args.limit))
            tiles = median_ms(lambda: (leadquery.counts(conn, "outcome"), leadquery.counts(conn, "reason")))
            started = time.perf_counter()
            scanned = sum(1 for _ in conn.hscan_iter(leadindex.ENTRIES_KEY, count=10_000))
            scan_ms = (time.perf_counter() - started) * 1000
            page = leadquery.page(conn, combined, args.limit)
            print(
                f"{count:>8,} leads: first LOST page {first:.2f} ms, a page 20 deep {twentieth:.2f} ms/page, "
                f"3 filters {three:.2f} ms ({len(page.rows)} rows), dashboard counts {tiles:.2f} ms; "
                f"baseline HSCAN of {scanned:,} entries {scan_ms:.0f} ms"
            )
            deep = {name: median_ms(partial(deep_page, conn, f, args.limit, 20), repeat=5) / 20 for name, f in wide}
            mixed = median_ms(lambda: leadquery.page(conn, lost_by_rule, args.limit))
            print(
                f"{'':>15}pages 20 deep: every lead {deep['all']:.2f} ms/page, outcome lost {deep['lost']:.2f}, "
                f"rule breakup_grace {deep['rule']:.2f}; outcome lost + rule reengage {mixed:.2f} ms"
            )
        return 0
    finally:
        flush_bench_db(conn)


if __name__ == "__main__":
    raise SystemExit(main())
