"""History benchmark: does the cost of an event grow with the lead's history? (issue #13)

Leads are preloaded with 1, 10, 100, 1,000 and 5,000 events each (spread over the past
year, applied and decided, so each holds its checkpoint as a live lead would). Then, in
interleaved rounds, one live, in-order 100-event batch per size (one new event for each of
100 leads of that size) goes through the code a worker runs for a batch:
`LeadStore.apply_batch` with a `Decider` (dry run), on the real Redis. The baseline of
the same run is a batch of 100 events for 100 leads never seen before ("fresh").

Also: one lead fed 1,000 single-event batches, against the same kind of 1,000 events fed
one per lead to 1,000 leads (issue target: within 2x); two processes applying batches to
distinct leads against one (target >= 1.4x; write conflicts per batch printed). And, with `--replay`, the rate when
every lead is replayed from its whole log (its checkpoint deleted before each batch: what
the engine did before checkpoints) for comparison.

    PRUNER_TEST_REDIS=127.0.0.1:6396 .venv/bin/python -m bench.history [--rounds 7] [--replay]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import redis

from bench.common import EVENT_MIX, REDIS_URL, bench_db, bench_redis, load_note
from rules.events import Crm, Event, EventType
from worker.decide import Decider
from worker.keys import CHECKPOINT_PREFIX
from worker.policyfile import default_policy
from worker.store import LeadStore

SIZES = (1, 10, 100, 1_000, 5_000)
LEADS = 100
TARGETS = {100: 0.7, 1_000: 0.5}
DAY_MS = 86_400_000
P = default_policy()


class Feed:
    """Canonical events of the day-to-day mix, each with a fresh id."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds = [(EventType(t), d) for t, d, _ in EVENT_MIX]
        self.weights = [w for _, _, w in EVENT_MIX]
        self.n = 0

    def event(self, lead: str, at_ms: int) -> Event:
        etype, data = self.rng.choices(self.kinds, weights=self.weights)[0]
        self.n += 1
        return Event(f"h{self.n}", etype, Crm.HUBSPOT, lead, at_ms, dict(data))


def preload(store: LeadStore, feed: Feed, size: int, start_ms: int, end_ms: int, now_ms: int) -> list[str]:
    """Create LEADS leads holding `size` events each, spread over [start, end); return their ids."""
    leads = [f"s{size}-{i}" for i in range(LEADS)]
    step = max(1, (end_ms - start_ms) // size)
    for lead in leads:
        history = [feed.event(lead, start_ms + k * step) for k in range(size)]
        for lo in range(0, size, 1_000):
            store.apply_batch(history[lo : lo + 1_000], Decider(P, now_ms, dry_run=True))
    return leads


def one_batch(store: LeadStore, feed: Feed, leads: list[str], at_ms: int, now_ms: int) -> float:
    """Apply one live batch (one event per lead, at `at_ms`); return events/s."""
    batch = [feed.event(lead, at_ms) for lead in leads]
    started = time.perf_counter()
    result = store.apply_batch(batch, Decider(P, now_ms, dry_run=True))
    seconds = time.perf_counter() - started
    assert result.added == len(batch), "a live batch lost events"
    return len(batch) / seconds


def forget_checkpoints(conn: redis.Redis, leads: list[str]) -> None:
    conn.delete(*[f"{CHECKPOINT_PREFIX}hubspot:{lead}" for lead in leads])


def worker_run(tag: str, batches: int, start_ms: int, now_ms: int, out: Any, go_signal: Any) -> None:
    """One process: `batches` live batches of 100 events to its own 100 leads (30 events each already)."""
    store = LeadStore(bench_redis())
    feed = Feed(hash(tag) & 0xFFFF)
    leads = [f"{tag}-{i}" for i in range(LEADS)]
    for lead in leads:
        store.apply_batch(
            [feed.event(lead, start_ms + k * 60_000) for k in range(30)], Decider(P, now_ms, dry_run=True)
        )
    out.put(("ready", 0.0, 0))
    go_signal.wait()  # all processes start the timed part together
    go = time.perf_counter()
    conflicts = 0
    for b in range(batches):
        batch = [feed.event(lead, start_ms + DAY_MS + b * 1000) for lead in leads]
        conflicts += store.apply_batch(batch, Decider(P, now_ms, dry_run=True)).conflicts
    out.put(("done", time.perf_counter() - go, conflicts))


def scaling(processes: int, batches: int, start_ms: int, now_ms: int, round_no: int) -> tuple[float, float]:
    """Events/s of `processes` workers on distinct leads, and write conflicts per batch."""
    ctx = multiprocessing.get_context("fork")
    out, go_signal = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker_run, args=(f"w{round_no}-{processes}-{k}", batches, start_ms, now_ms, out, go_signal))
        for k in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in range(processes)]
    go_signal.set()
    results += [out.get(timeout=600) for _ in range(processes)]
    for proc in procs:
        proc.join(timeout=60)
    done = [(s, c) for kind, s, c in results if kind == "done"]
    seconds = max(s for s, _ in done)
    events = processes * batches * LEADS
    return events / seconds, sum(c for _, c in done) / (processes * batches)


def spread(values: list[float]) -> str:
    return f"{min(values):>9,.0f} {statistics.median(values):>9,.0f} {max(values):>9,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per size (7)")
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="events per lead before the run")
    p.add_argument("--replay", action="store_true", help="also time full replays (checkpoints deleted)")
    p.add_argument("--single", type=int, default=1_000, help="events for the one-lead vs many-leads test (1000)")
    p.add_argument("--scale-batches", type=int, default=30, help="batches per process in the 1 vs 2 workers test")
    args = p.parse_args(argv)
    print("== history: live 100-event batches to leads holding N events (store + decider, dry run) ==")
    print(f"Redis: {REDIS_URL}; before: {load_note()}")
    feed = Feed(13)
    now_ms = int(time.time() * 1000)
    live_ms = now_ms - DAY_MS  # live events from here on, one second apart, all before `now`
    with bench_db() as conn:
        store = LeadStore(conn)
        started = time.perf_counter()
        groups = {size: preload(store, feed, size, now_ms - 365 * DAY_MS, live_ms, now_ms) for size in args.sizes}
        print(f"-- preloaded {LEADS} leads per size in {time.perf_counter() - started:.1f} s", flush=True)
        rates: dict[str, list[float]] = {"fresh": []}
        rates.update({str(size): [] for size in args.sizes})
        replays: dict[str, list[float]] = {str(size): [] for size in args.sizes}
        tick = 0
        for r in range(args.rounds):
            fresh = [f"fresh{r}-{i}" for i in range(LEADS)]
            tick += 1
            rates["fresh"].append(one_batch(store, feed, fresh, live_ms + tick * 1000, now_ms))
            for size, leads in groups.items():
                tick += 1
                rates[str(size)].append(one_batch(store, feed, leads, live_ms + tick * 1000, now_ms))
                if args.replay and (size <= 1_000 or r == 0):
                    forget_checkpoints(conn, leads)
                    tick += 1
                    replays[str(size)].append(one_batch(store, feed, leads, live_ms + tick * 1000, now_ms))
        base = statistics.median(rates["fresh"])
        print(f"after: {load_note()}")
        print()
        print(f"{'leads hold':>10} {'min ev/s':>9} {'median':>9} {'max':>9} {'ratio':>6} {'target':>7}")
        for name, values in rates.items():
            ratio = statistics.median(values) / base
            target = TARGETS.get(int(name)) if name.isdigit() else None
            verdict = "" if target is None else (f">={target:.1f} " + ("met" if ratio >= target else "MISSED"))
            label = "fresh" if name == "fresh" else f"{int(name):,}"
            print(f"{label:>10} {spread(values)} {ratio:>6.2f} {verdict}")
        if args.replay:
            print("full replay (checkpoint deleted before the batch, as before issue #13):")
            for name, values in replays.items():
                if values:
                    ratio = statistics.median(values) / base
                    print(f"{int(name):>10,} {spread(values)} {ratio:>6.3f}")

        # One lead, many single-event batches, against the same over many leads.
        n = args.single
        one_lead = [feed.event("hot", live_ms + 10_000_000 + k * 1000) for k in range(n)]
        many = [feed.event(f"cold{k}", live_ms + 10_000_000 + k * 1000) for k in range(n)]
        timings = {}
        for label, events in (("one lead", one_lead), ("many leads", many)):
            started = time.perf_counter()
            for ev in events:
                store.apply_batch([ev], Decider(P, now_ms, dry_run=True))
            timings[label] = time.perf_counter() - started
        ratio = timings["one lead"] / timings["many leads"]
        print()
        print(
            f"{n} single-event batches: one lead {timings['one lead']:.2f} s, {n} leads {timings['many leads']:.2f} s: "
            f"{ratio:.2f}x (target <= 2x: {'met' if ratio <= 2 else 'MISSED'})"
        )

        one_rates, two_rates, two_conflicts = [], [], []
        for r in range(3):  # interleaved: one, two, one, two, ...
            one_rates.append(scaling(1, args.scale_batches, live_ms - 30 * DAY_MS, now_ms, r)[0])
            rate, conflicts = scaling(2, args.scale_batches, live_ms - 30 * DAY_MS, now_ms, r)
            two_rates.append(rate)
            two_conflicts.append(conflicts)
        ratio = statistics.median(two_rates) / statistics.median(one_rates)
        print(f"1 worker  events/s (min median max): {spread(one_rates)}")
        conflicts = max(two_conflicts)
        print(f"2 workers events/s (min median max): {spread(two_rates)}; write conflicts per batch <= {conflicts:.2f}")
        print(f"2 workers / 1 worker: {ratio:.2f}x (target >= 1.4x: {'met' if ratio >= 1.4 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
