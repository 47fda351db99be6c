"""Job functions the benchmarks enqueue (module-level, so an RQ worker can import them by name)."""

from __future__ import annotations

NOOP = "bench.jobs.noop"


def noop() -> None:
    """Do nothing: what is left is RQ's own cost per job."""
