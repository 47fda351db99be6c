"""Pruner's functional core: canonical events, lead counters, policy and decisions.

Nothing in this package does I/O: no Redis, no HTTP, no Flask. The shell
(`webhooks/`, `worker/`) loads data, calls these functions and persists results.
"""
