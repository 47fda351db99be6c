"""Benchmark `pruner simulate`: events/s through read + validate + replay, vs plain json.loads.

.venv/bin/python -m bench.simulate [--events 200000] [--leads 20000]

Target (issue 3): >= 50,000 events/s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from worker.policyfile import default_policy
from worker.simulate import read_events, simulate, simulate_file

KINDS = (
    ["email_sent"] * 5
    + ["call_attempted"] * 4
    + ["email_replied", "call_connected", "meeting_booked", "time_logged", "not_interested", "meeting_rescheduled"]
)
T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


def write_history(path: Path, events: int, leads: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for n in range(events):
            kind = rng.choice(KINDS)
            data: dict[str, object] = {"minutes": 30} if kind == "time_logged" else {}
            at = T0 + timedelta(minutes=rng.randrange(60 * 24 * 90))
            row = {
                "id": f"e{n}",
                "type": kind,
                "crm": "hubspot",
                "lead_id": f"L{rng.randrange(leads)}",
                "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "data": data,
            }
            out.write(json.dumps(row) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.simulate")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--leads", type=int, default=20_000)
    args = p.parse_args(argv)
    policy = default_policy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        write_history(path, args.events, args.leads)
        started = time.perf_counter()
        with path.open() as stream:
            for line in stream:
                json.loads(line)
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        with path.open() as stream:
            single = simulate(read_events(stream), policy)
        one_process = time.perf_counter() - started
        started = time.perf_counter()
        report = simulate_file(str(path), policy)
        elapsed = time.perf_counter() - started
        assert report.to_json() == single.to_json(), "sharded and single-process reports differ"
    rate, base_rate = args.events / elapsed, args.events / baseline
    print(f"one process: {args.events / one_process:,.0f} events/s")
    print(f"simulate: {args.events} events, {report.leads} leads in {elapsed:.2f} s = {rate:,.0f} events/s")
    print(f"baseline json.loads only: {base_rate:,.0f} lines/s; simulate/json.loads = {rate / base_rate:.2f}x")
    print(f"final states: {dict(report.final_states)}")
    print(f"target >= 50,000 events/s: {'MET' if rate >= 50_000 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
