"""The store's transactions: one optimistic WATCH/MULTI loop, and the writes its operations queue in it.

A batch of events (worker/store.py), a merge and a deletion (worker/identity.py) each watch
what they read, queue their writes after `pipe.multi()` and run again from fresh reads when
another worker committed first; the writes that persist an outcome or an erasure are the
same whichever operation decided them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
import redis
from redis.client import Pipeline

from worker.errors import StoreError
from worker.keys import (
    ACTIONS_KEPT,
    ACTIONS_KEY,
    DUE_KEY,
    Lead,
    checkpoint_key,
    due_member,
    forgotten_key,
    lead_key,
    merged_key,
    outbox_key,
    state_key,
)
from worker.leadview import Outcome
from worker.suppression import AUDIT_KEY, SUPPRESSED_KEY, lead_hash

T = TypeVar("T")
_STATE_ENCODER = msgspec.json.Encoder()
MAX_ATTEMPTS = 50


def optimistic(
    connection: redis.Redis,
    what: str,
    attempt: Callable[[Pipeline], T],
    conflicted: Callable[[], None] | None = None,
) -> T:
    """Run `attempt` in a WATCH/MULTI transaction; again, from its reads, when a watched key changed.

    `attempt` watches what it reads and queues its writes after `pipe.multi()`; a write
    conflict (another worker committed first) raises WatchError at EXEC and it runs again.
    StoreError after MAX_ATTEMPTS conflicts (`what` says what was being written).
    """
    for _attempt in range(MAX_ATTEMPTS):
        with connection.pipeline(transaction=True) as pipe:
            try:
                return attempt(pipe)
            except redis.WatchError:
                if conflicted is not None:
                    conflicted()
    raise StoreError(f"gave up after {MAX_ATTEMPTS} write conflicts {what}")


def queue_erasure(
    pipe: Any,
    suppression_key: bytes | None,
    lead: Lead,
    outcome: Outcome,
    aliases: Iterable[str] = (),
    forgotten: Iterable[str] = (),
) -> None:
    """Queue the deletion of everything held about an erased lead, and the hashes that stay."""

    pipe.delete(lead_key(*lead), state_key(*lead), checkpoint_key(*lead))
    remembered = list(forgotten)
    if remembered and suppression_key is not None:
        # The lead was deleted in the CRM before its erasure arrived: its emails, kept
        # as keyed hashes for this, join the suppression list like the lead's own would.
        pipe.sadd(SUPPRESSED_KEY, *remembered)
        pipe.delete(forgotten_key(lead_hash(suppression_key, *lead)))
    pipe.zrem(DUE_KEY, due_member(*lead))
    merged = list(aliases)
    if merged and suppression_key is not None:
        # Ids merged into the erased lead are the same person: their events are dropped
        # from now on too, and the mapping that named them goes.
        hashes = [lead_hash(suppression_key, lead[0], m) for m in merged]
        pipe.sadd(SUPPRESSED_KEY, *hashes)
        pipe.hdel(merged_key(lead[0]), *merged)
    if outcome.suppress_hashes:
        pipe.sadd(SUPPRESSED_KEY, *outcome.suppress_hashes)
    if outcome.audit is not None:
        pipe.rpush(AUDIT_KEY, json.dumps(outcome.audit, separators=(",", ":")))


def queue_outcome(pipe: Any, lead: Lead, outcome: Outcome, had_state: bool = True) -> None:
    """Queue a decided outcome: checkpoint, state record, due time, recorded and outbound actions."""
    skey = state_key(*lead)
    if outcome.checkpoint is not None:
        pipe.set(checkpoint_key(*lead), outcome.checkpoint)
    else:
        # No checkpoint (every event dated after `now`): an older one would miss them.
        pipe.delete(checkpoint_key(*lead))
    if outcome.state is None and not had_state and not outcome.actions:
        # The common case (an ACTIVE lead without decisions, before and after): a due
        # entry only ever exists beside a state record, so there is nothing to write.
        return
    if outcome.state is None:
        pipe.delete(skey)
    else:
        # msgspec's encoder: the compact JSON json.dumps wrote, several times faster (every
        # batch of a decided lead rewrites its state record).
        pipe.set(skey, _STATE_ENCODER.encode(outcome.state))
    member = due_member(*lead)
    if outcome.due_ms is None:
        pipe.zrem(DUE_KEY, member)
    else:
        pipe.zadd(DUE_KEY, {member: outcome.due_ms})
    if outcome.actions:
        encoded = [json.dumps(a, separators=(",", ":")) for a in outcome.actions]
        pipe.rpush(ACTIONS_KEY, *encoded)
        pipe.ltrim(ACTIONS_KEY, -ACTIONS_KEPT, -1)
        live = [e for a, e in zip(outcome.actions, encoded, strict=True) if not a.get("dry_run")]
        if live:
            pipe.rpush(outbox_key(lead[0]), *live)
