"""Benchmark the time-based sweep: 1,000 due leads among 1,000,000 tracked.

.venv/bin/python -m bench.sweep [--tracked 1000000] [--due 1000] [--history 1000]

Every tracked lead has an event log and a due time; only `--due` of them are due
(BREAKUP_DUE past their grace). The sweep must cost what the due leads cost, not
what all leads cost. Baseline, same run: a full SCAN over the lead keys, which is
what a sweep without a due-time index would at least have to do.
Target (issue 3): < 1 s. Uses Redis DB 13 only.

`--history N` (issue #13): each due lead holds N events, not 13: a year of touches and replies
before its 13 silent ones, so the sweep's cost with long histories shows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bench.common import bench_redis, flush_bench_db
from rules.counters import LoggedEvent
from rules.events import Crm, Event, EventType
from worker import eventlog
from worker.config import Config
from worker.jobs import decider, run_sweep
from worker.keys import DUE_KEY, due_member, lead_key
from worker.store import LeadStore

DAY = 86_400_000
T0 = 1_772_442_000_000  # Monday 2 March 2026 09:00 UTC: no holidays near


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep")
    p.add_argument("--tracked", type=int, default=1_000_000)
    p.add_argument("--due", type=int, default=1000)
    p.add_argument("--history", type=int, default=13, help="events each due lead holds (13)")
    args = p.parse_args(argv)
    conn = bench_redis()
    flush_bench_db(conn)
    try:
        store = LeadStore(conn)
        config = Config.from_env({})
        # The due leads: 13 silent touches -> BREAKUP_DUE, with their real state records, and
        # the break-up task created an hour later (guardrail 7: its grace runs from then), as the
        # drain records it. Decided as the sweep decides them (jobs.decider, the same settings):
        # a checkpoint is only continued in the mode that wrote it, and a bench deciding in
        # another mode than the sweep measured full replays (4.6 s for this sweep, 2026-12-05).
        due_events = [
            Event(f"d{i}-{n}", EventType.EMAIL_SENT, Crm.HUBSPOT, f"due-{i}", T0 + n * 60_000, {})
            for i in range(args.due)
            for n in range(13)
        ]
        tasks = [
            Event(f"t{i}", EventType.BREAKUP_TASK_CREATED, Crm.HUBSPOT, f"due-{i}", T0 + 3_600_000, {})
            for i in range(args.due)
        ]
        earlier = max(0, args.history - 13)
        step = 365 * DAY // max(1, earlier)
        for i in range(args.due):
            # A year of touches, every fifth answered, before the silence.
            past = [
                Event(f"p{i}-{n}", EventType.EMAIL_REPLIED if n % 5 == 4 else EventType.EMAIL_SENT,
                      Crm.HUBSPOT, f"due-{i}", T0 - 365 * DAY + n * step, {})
                for n in range(earlier)
            ]  # fmt: skip
            for start in range(0, len(past), 1000):
                store.apply_batch(past[start : start + 1000], decider(config, T0))
        for start in range(0, len(due_events), 13 * 100):
            store.apply_batch(due_events[start : start + 13 * 100], decider(config, T0 + DAY))
        for start in range(0, len(tasks), 1000):
            store.apply_batch(tasks[start : start + 1000], decider(config, T0 + DAY))
        # The rest: one touch each, due (as far as the index knows) a year from now.
        blob = eventlog.append(None, [LoggedEvent(T0, EventType.EMAIL_SENT, b"\x00" * eventlog.KEY_BYTES, {})])
        filled = args.due
        while filled < args.tracked:
            with conn.pipeline(transaction=False) as pipe:
                chunk = range(filled, min(filled + 20_000, args.tracked))
                for i in chunk:
                    pipe.set(lead_key("hubspot", f"cold-{i}"), blob)
                pipe.zadd(DUE_KEY, {due_member("hubspot", f"cold-{i}"): T0 + 365 * DAY for i in chunk})
                pipe.execute()
            filled += len(chunk)
        print(f"tracked leads: {conn.zcard(DUE_KEY):,} in the due index, {conn.dbsize():,} keys")

        started = time.perf_counter()
        scanned = sum(1 for _ in conn.scan_iter("pruner:lead:*", count=10_000))
        scan_s = time.perf_counter() - started
        started = time.perf_counter()
        result = run_sweep(conn, config, T0 + 30 * DAY)
        sweep_s = time.perf_counter() - started
        sample = range(0, args.due, 97)
        lost = sum(1 for i in sample if (store.state("hubspot", f"due-{i}") or {}).get("state") == "LOST")
        print(f"baseline SCAN of {scanned:,} lead keys: {scan_s:.2f} s")
        print(
            f"sweep: {result['due']} due leads evaluated, {result['actions']} actions in {sweep_s:.3f} s "
            f"({sweep_s / scan_s:.3f}x the SCAN); sampled due leads LOST: {lost}/{len(sample)}"
        )
        print(f"target < 1 s: {'MET' if sweep_s < 1 else 'NOT MET'}")
        return 0 if result["due"] == args.due else 1
    finally:
        flush_bench_db(conn)


if __name__ == "__main__":
    raise SystemExit(main())
