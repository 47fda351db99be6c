"""Memory benchmark: Redis bytes per tracked lead at 100k leads, via LeadStore.apply_batch directly.

Events reach leads the way they do in production: one touch at a time, in batches of 1000 events over
1000 distinct leads, each batch appending to the leads' packed logs.

1. every lead gets `email_sent`                       -> bytes/lead at 1 event per lead
2. every lead gets `call_attempted`, then one third touch — `email_replied` for 1 lead in 5, a
   follow-up `email_sent` ({"follow_up": true}) for the others   -> bytes/lead at 3 events per lead

bytes/lead = (INFO memory used_memory after - before) / leads, measured on an empty DB 13 with a fresh
connection (so no client buffers of ours are counted). INFO counts the whole server, so the other
databases must be quiet meanwhile; MEMORY USAGE of sampled keys is printed as a DB-local cross-check.
The baseline is Redis's own cost of a key: as many keys, same names, holding empty strings, measured
in the same run.

    .venv/bin/python -m bench.memory [--leads 100000] [--batch 1000] [--decider]
    .venv/bin/python -m bench.memory --history 10 50 200 [--leads 1000]

`--history N...` (issue #13): leads that accumulate N events each over a year (the day-to-day
mix of bench.common.EVENT_MIX, one event per lead per batch, in time order), decided as the
worker does: bytes per lead with its log, checkpoint, state record, due entry and its share
of the aggregates. Targets: <= 1,000 B at 50 events, <= 2,500 B at 200, judged on the total
(`bytes/lead`); `w/o actions` leaves out the store-wide record of the last 100,000 actions.

`--decider` applies the batches with the worker's decider (worker.jobs.decider, the configured
policy), as `process_events` does, so state records, the due set and the actions outbox are counted
too; slower (about a minute at 100k leads).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bench.common import (
    REDIS_URL,
    SENTINEL_KEY,
    bench_db,
    bench_redis,
    child_env,
    flush_bench_db,
    lead_ids,
    load_note,
    year_of_events,
)
from rules.events import Crm, Event, EventType
from worker.keys import ACTIONS_KEY, DUE_KEY, STATE_PREFIX, lead_key
from worker.store import LeadStore

TARGET_BYTES = 300
REPLY_EVERY = 5  # 1 lead in 5 replies
SAMPLE = 1000


def used_memory() -> int:
    """INFO memory used_memory, read on a fresh connection after the server settled."""
    time.sleep(0.3)
    conn = bench_redis()
    try:
        return int(conn.info("memory")["used_memory"])
    finally:
        conn.close()


def memory_usage(conn: redis.Redis, leads: Sequence[tuple[str, str]]) -> float:
    """Mean MEMORY USAGE over evenly spread lead keys: immune to other databases' churn."""
    step = max(1, len(leads) // SAMPLE)
    pipe = conn.pipeline(transaction=False)
    for crm, lead_id in leads[::step][:SAMPLE]:
        pipe.memory_usage(lead_key(crm, lead_id), samples=0)
    sizes = [int(n) for n in pipe.execute() if n is not None]
    return sum(sizes) / len(sizes)


def touches(leads: Sequence[tuple[str, str]], step: int, base: datetime) -> Iterator[Event]:
    """The `step`-th touch (0, 1, 2) of every lead, as canonical events."""
    for i, (crm, lead_id) in enumerate(leads):
        data: dict[str, Any]
        at = int((base + timedelta(hours=step * 26, minutes=i % 600)).timestamp() * 1000)
        if step == 0:
            etype, data = EventType.EMAIL_SENT, {}
        elif step == 1:
            etype, data = EventType.CALL_ATTEMPTED, {}
        elif i % REPLY_EVERY == 0:
            etype, data = EventType.EMAIL_REPLIED, {}
        else:
            etype, data = EventType.EMAIL_SENT, {"follow_up": True}
        yield Event(f"evt-{step}-{i:09d}-{crm[:2]}", etype, Crm(crm), lead_id, at, data)


def apply_all(store: LeadStore, events: Iterator[Event], batch: int, decider: bool) -> int:
    chunk: list[Event] = []
    applied = 0
    for event in events:
        chunk.append(event)
        if len(chunk) == batch:
            applied += apply(store, chunk, decider)
            chunk = []
    if chunk:
        applied += apply(store, chunk, decider)
    return applied


def apply(store: LeadStore, events: list[Event], decider: bool) -> int:
    if not decider:
        return store.apply_batch(events).added
    from worker.config import Config
    from worker.jobs import decider as make_decider

    decide = make_decider(Config.from_env(child_env()), int(time.time() * 1000))
    return store.apply_batch(events, decide).added


def empty_keys(conn: redis.Redis, leads: Sequence[tuple[str, str]], batch: int) -> None:
    """Baseline: the same key names holding empty strings (Redis's own per-key cost)."""
    for start in range(0, len(leads), batch):
        conn.mset({lead_key(crm, lead_id): b"" for crm, lead_id in leads[start : start + batch]})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--leads", type=int, default=100_000, help="distinct leads (100000)")
    p.add_argument("--batch", type=int, default=1000, help="events per apply_batch call (1000)")
    p.add_argument("--decider", action="store_true", help="apply with the worker's decider (state, due set, outbox)")
    p.add_argument("--history", type=int, nargs="*", help="events per lead over a year, e.g. 10 50 200 (issue #13)")
    return p


HISTORY_TARGETS = {50: 1_000, 200: 2_500}


def history_run(leads: Sequence[tuple[str, str]], sizes: Sequence[int], batch: int) -> None:
    """Bytes per lead when each lead holds N events spread over a year, decided as the worker does."""
    import random

    rng = random.Random(7)
    end = datetime.now(tz=UTC) - timedelta(days=1)
    print(
        f"{'events/lead':>11} {'bytes/lead':>10} {'w/o actions':>11} {'log B':>7} {'checkpoint B':>12} {'state B':>8} "
        f"{'target':>8}"
    )
    with bench_db() as conn:
        store = LeadStore(conn)
        for size in sizes:
            flush_bench_db(conn)
            before = used_memory()
            for events in year_of_events(leads, size, end, rng, "h"):
                apply_all(store, iter(events), batch, True)
            per_lead = (used_memory() - before) / len(leads)
            # The record of decided actions is one list for the whole store that stops growing at
            # ACTIONS_KEPT entries, whatever the number of leads: with a few hundred leads it is much
            # of the figure (at 1M leads, ~12 B a lead), so the figure without it is shown too.
            record = int(conn.memory_usage(ACTIONS_KEY, samples=0) or 0)
            own = per_lead - record / len(leads)
            sample = leads[: min(200, len(leads))]
            sizes_of = {
                name: sum(len(conn.get(f"pruner:{name}:{crm}:{lead}") or b"") for crm, lead in sample) / len(sample)
                for name in ("lead", "ck", "state")
            }
            target = HISTORY_TARGETS.get(size)
            verdict = "" if target is None else f"<={target} " + ("met" if per_lead <= target else "MISSED")
            print(
                f"{size:>11} {per_lead:>10.0f} {own:>11.0f} {sizes_of['lead']:>7.0f} {sizes_of['ck']:>12.0f} "
                f"{sizes_of['state']:>8.0f} {verdict}",
                flush=True,
            )
            print("            by key family (MEMORY USAGE per lead): " + families(conn, len(leads)), flush=True)


def families(conn: redis.Redis, leads: int) -> str:
    """MEMORY USAGE summed per key family (`pruner:<family>:...`), per lead: where the bytes are."""
    totals: dict[str, int] = {}
    for key in conn.scan_iter(match="pruner:*", count=1000):
        family = ":".join(key.decode().split(":")[:2])
        totals[family] = totals.get(family, 0) + int(conn.memory_usage(key, samples=0) or 0)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {total / leads:,.0f}" for name, total in ranked)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    leads = lead_ids(args.leads)
    if args.history:
        print(f"== memory: Redis bytes per lead holding N events over a year ({args.leads} leads, decider on) ==")
        print(f"Redis: {REDIS_URL}; before: {load_note()}")
        history_run(leads, args.history, args.batch)
        return 0
    base = datetime.now(tz=UTC) - timedelta(days=10)
    print("== memory: Redis bytes per tracked lead ==")
    print(f"Redis: {REDIS_URL}; {args.leads} leads (4/5 HubSpot ids, 1/5 Salesforce), batches of {args.batch}")
    print(f"before: {load_note()}")
    with bench_db() as conn:
        store = LeadStore(conn)
        empty = used_memory()
        started = time.perf_counter()
        empty_keys(conn, leads, args.batch)
        key_only = (used_memory() - empty) / args.leads
        flush_bench_db(conn)

        before = used_memory()
        added = apply_all(store, touches(leads, 0, base), args.batch, args.decider)
        one = (used_memory() - before) / args.leads
        assert added == args.leads, f"expected {args.leads} events applied, got {added}"
        for step in (1, 2):
            added += apply_all(store, touches(leads, step, base), args.batch, args.decider)
        three = (used_memory() - before) / args.leads
        assert added == 3 * args.leads, f"expected {3 * args.leads} events applied, got {added}"
        sample = conn.get(lead_key(*leads[1]))
        sampled = memory_usage(conn, leads)
        elapsed = time.perf_counter() - started
        keys = int(conn.dbsize()) - int(conn.exists(SENTINEL_KEY))
        states = sum(1 for _ in conn.scan_iter(match=f"{STATE_PREFIX}*", count=1000))
        due = int(conn.zcard(DUE_KEY))
        outbox = int(conn.llen(ACTIONS_KEY))

    mode = "with the worker's decider" if args.decider else "without a decider (event logs only)"
    print(f"   {3 * args.leads} events applied {mode} in {elapsed:.1f} s: {keys} keys")
    print(f"   state records: {states}, due set members: {due}, outbox actions: {outbox}")
    print()
    print(f"{'events/lead':<12} {'bytes/lead':>10}  {'vs key alone':>12}")
    print(f"{'0 (baseline)':<12} {key_only:>10.1f}  {'1.00x':>12}   same key names, empty string values")
    print(f"{'1':<12} {one:>10.1f}  {one / key_only:>11.2f}x   email_sent")
    reply = f"email_replied for 1 in {REPLY_EVERY}, follow-up email_sent for the rest"
    print(f"{'3':<12} {three:>10.1f}  {three / key_only:>11.2f}x   email_sent, call_attempted, {reply}")
    print(f"\npacked log of a 3-event lead: {len(sample or b'')} bytes of value; key {lead_key(*leads[1])!r}")
    print(f"cross-check, DB-local: MEMORY USAGE of {SAMPLE} sampled lead keys averages {sampled:.1f} B")
    print("  (key + value + object headers; without the main dict's bucket array, ~8-16 B/key)")
    verdict = "meets" if three <= TARGET_BYTES else "MISSES"
    print(f"bytes per lead at 3 events = {three:.0f} B  ({verdict} the target <= {TARGET_BYTES} B)")
    print(f"at 1,000,000 leads x 3 events: ~{three * 1_000_000 / 2**20:,.0f} MiB of Redis")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
