"""Backfill benchmark: how close `pruner backfill hubspot` runs to the rate limits HubSpot allows (issue #14).

A fake portal (tests/fakes/portal.py: contacts with months of calls, emails, meetings and
deals) behind the fake HubSpot over real HTTP, which enforces the limits itself. Each round
reads the whole portal (dry run: nothing is queued), interleaved with a round without any
limit (the baseline: what this machine, the fake and the mapping manage unthrottled).

The ceiling is set by two budgets: every request counts against the portal's limit (100 per
10 s for a private app, of which the backfill takes `--share`, default 80 %: the rest stays for
the callbacks), and searches also against HubSpot's search limit (4 a second). The ideal time
for the requests a round made is the larger of the two budgets' times (a sliding window lets
its first `limit` requests through at once, then `limit` per window); efficiency = ideal /
actual, target >= 0.8. Records per second are reported too.

    PRUNER_TEST_REDIS=127.0.0.1:6396 .venv/bin/python -m bench.backfill [--contacts 300] [--scale 0.25] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from bench.common import bench_db, load_note
from rules.hubspot_map import HubSpotMapping
from tests.fakes.hubspot import TOKEN, FakeHubSpotServer
from tests.fakes.portal import seed_portal
from worker.backfill import Backfill, Window
from worker.backfill_sinks import NullSink
from worker.crm.hubspot_backfill import HubSpotHistory, search_limiter
from worker.crm.hubspot_client import HubSpotClient
from worker.crm.ratelimit import RateLimiter

DAY_MS = 86_400_000
NOW_MS = 1_790_000_000_000
REAL_LIMIT, WINDOW_S = 100, 10.0  # a private app's burst limit
REAL_SEARCH = (4, 1.0)  # HubSpot's search limit, per portal
# HubSpot's limits times --scale: the fake answers a search of a few thousand engagements in
# ~0.2-0.5 s (it scans them in Python), slower than HubSpot's 4 searches a second; at a
# quarter of the real limits the fake is no longer what holds the backfill back.
LIMIT, SEARCH = REAL_LIMIT, REAL_SEARCH


@dataclass
class Round:
    seconds: float
    requests: int  # answered, not refused with 429: the work the ceiling is measured on
    searches: int
    records: int
    refused: int  # 429s: a request the limiter let through too early, retried after a wait

    def ideal(self, share: float) -> float:
        """The least time these requests can take: a sliding window lets its first `limit` through
        at once, then `limit` per window (the portal's share, and the search budget)."""
        allowed = max(1, int(LIMIT * share))
        portal = max(0, self.requests - allowed) / allowed * WINDOW_S
        search = max(0, self.searches - SEARCH[0]) / SEARCH[0] * SEARCH[1]
        return max(portal, search)


def one_round(server: FakeHubSpotServer, conn: redis.Redis, contacts: int, limited: bool, share: float) -> Round:
    for key in [*conn.scan_iter("bench:ratelimit*"), *conn.scan_iter("pruner:ratelimit:*")]:
        conn.delete(key)  # a fresh window each round (DB 13's sentinel stays)
    fake = server.fake
    fake.calls.clear()
    fake.configure(rate_limit=LIMIT if limited else 10**9, window_s=WINDOW_S,
                   search_rate_limit=SEARCH[0] if limited else 10**9)  # fmt: skip
    limiter = RateLimiter(conn, max(1, int(LIMIT * share)), WINDOW_S, key="bench:ratelimit:hubspot", margin_s=0.2)
    client = HubSpotClient(server.url, TOKEN, limiter if limited else None)
    searches = search_limiter(conn, SEARCH) if limited else None
    history = HubSpotHistory(client, searches)
    window = Window(NOW_MS - 200 * DAY_MS, NOW_MS)
    run = Backfill(history, NullSink(), window, HubSpotMapping(), None, clock=lambda: NOW_MS / 1000)
    started = time.perf_counter()
    tally = run.run()
    seconds = time.perf_counter() - started
    client.close()
    calls = [c for c in fake.api_calls() if c["status"] != 429]
    refused = sum(1 for c in fake.api_calls() if c["status"] == 429)
    searched = sum(1 for c in calls if c["path"].endswith("/search"))
    return Round(seconds, len(calls), searched, sum(tally.records.values()), refused)


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--share", type=float, default=0.8, help="of the portal's limit the backfill may take")
    p.add_argument("--scale", type=float, default=0.25, help="fraction of HubSpot's real limits to enforce")
    args = p.parse_args(argv)
    global LIMIT, SEARCH
    LIMIT = max(1, round(REAL_LIMIT * args.scale))
    SEARCH = (max(1, round(REAL_SEARCH[0] * args.scale)), REAL_SEARCH[1])
    print(f"bench.backfill: {args.contacts} contacts, {args.rounds} rounds, share {args.share:.0%}, limits "
          f"{LIMIT}/{WINDOW_S:g} s and {SEARCH[0]} searches/s ({args.scale:g} x HubSpot's); {load_note()}")  # fmt: skip
    with bench_db() as conn, FakeHubSpotServer() as server:
        portal = seed_portal(server.fake, NOW_MS, contacts=args.contacts)
        engagements = sum(len(v) for v in portal.engagements.values())
        print(f"portal: {len(portal.contacts)} contacts, {engagements} engagements")
        limited: list[Round] = []
        free: list[Round] = []
        for _ in range(args.rounds):  # interleaved: the machine's load falls on both alike
            free.append(one_round(server, conn, args.contacts, False, args.share))
            limited.append(one_round(server, conn, args.contacts, True, args.share))
        base = [r.records / r.seconds for r in free]
        rate = [r.records / r.seconds for r in limited]
        efficiency = [r.ideal(args.share) / r.seconds for r in limited]
        first = limited[0]
        print(f"requests per round: {first.requests} ({first.searches} searches), records {first.records}; "
              f"429s per round: {[r.refused for r in limited]}")  # fmt: skip
        print(f"unlimited (baseline): {spread([r.seconds for r in free])} s; records/s {spread(base)}")
        print(f"under HubSpot's limits: {spread([r.seconds for r in limited])} s; records/s {spread(rate)}")
        print(f"ideal time at the ceiling: {first.ideal(args.share):.2f} s")
        print(f"efficiency (ideal / actual, target >= 0.8): {spread(efficiency)}")
        print(f"limited / unlimited records/s: {spread([r / b for r, b in zip(rate, base, strict=True)])}")
        print(f"records/s at HubSpot's real limits (x {1 / args.scale:g}): {spread([r / args.scale for r in rate])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
