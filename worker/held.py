"""Decisions held back, and their release: a dry run's, and a live backfill's until it ends.

A held decision is recorded like any other (`/leads`, `pruner explain`, the actions record,
flagged `dry_run`) but sends nothing: the decider remembers it in the state record's
`dry_acted`, not as acted on (worker/decide.py). The first live evaluation of the lead acts on
its current decision for real. `release_held` makes every lead with held decisions due now,
so that the clock's next sweep (every minute) is that evaluation:

- at the first live start after a dry run (worker/upgrades.py);
- at the end of a live backfill, once the workers have applied every batch it queued
  (worker/backfill_command.py). A backfill reads one object type after another, so until
  then a lead's history is partial: its replies may still be on their way, and a decision on
  what came first (15 emails, no reply yet) must not mark it lost in the CRM.
"""

from __future__ import annotations

import redis

from worker import staterecord
from worker.keys import DUE_KEY, STATE_PREFIX

CHUNK = 1_000


def release_held(connection: redis.Redis, now_ms: int, scan_count: int = 500) -> int:
    """Make every lead whose state record holds decisions not yet acted on due at `now_ms`; return how many."""
    due: dict[str, int] = {}
    released = 0
    for key in connection.scan_iter(f"{STATE_PREFIX}*", count=scan_count):
        raw = connection.get(key)
        if raw is not None and staterecord.decode(raw).get("dry_acted"):
            due[key[len(STATE_PREFIX) :].decode()] = now_ms  # `crm:lead id`, the due set's member too
        if len(due) >= CHUNK:
            connection.zadd(DUE_KEY, due)
            released, due = released + len(due), {}
    if due:
        connection.zadd(DUE_KEY, due)
        released += len(due)
    return released
