"""Run the three benchmarks one after the other (about two minutes on 2 cores).

.venv/bin/python -m bench.run_all [--duration 10]    # `make bench`
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable, Sequence

from bench import ingest, memory, processing


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds of measured load per ingest target (10)")
    args = p.parse_args(argv)
    runs: list[tuple[str, Callable[[Sequence[str]], int], list[str]]] = [
        ("ingest", ingest.main, ["--duration", str(args.duration)]),
        ("processing", processing.main, []),
        ("memory", memory.main, []),
    ]
    started = time.perf_counter()
    codes: dict[str, int] = {}
    for name, run, run_args in runs:
        began = time.perf_counter()
        try:
            codes[name] = run(run_args)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            codes[name] = 1
        print(f"[{name}: exit {codes[name]}, {time.perf_counter() - began:.0f} s]\n", flush=True)
    print(f"all benchmarks done in {time.perf_counter() - started:.0f} s: {codes}")
    return max(codes.values())


if __name__ == "__main__":
    raise SystemExit(main())
