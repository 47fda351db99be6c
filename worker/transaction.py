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

import redis
from redis.client import Pipeline

from worker import actionrecord, staterecord
from worker.errors import StoreError
from worker.keys import (
    ACTIONS_KEPT,
    ACTIONS_KEY,
    DUE_KEY,
    SCRATCH_KEY,
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


# Append to each of KEYS its ARGV: a batch's ~100 log appends as one command (see `Writes`).
# Redis grows an APPENDed string greedily (to twice its new length, below 1 MB) and the slack
# stays with the key: ~850 B of a 2,700 B log of 200 events, a fifth of a lead's memory. COPY
# stores a duplicate at its size, and RENAME puts it in the log's place: two memcpy in Redis,
# ~1.5 us a log whatever its length. (Until 2026-12-06 a log below 8 KB was rewritten from
# Lua, `SET key (GET key .. new)`: the log went through Lua's strings, ~2.5 us per KB of log
# for each event added, the one cost of a live event that grew with the lead's history; and
# Redis's AOF and replicas received the whole log each time.) A log the APPEND creates is at
# its size already. The scratch key lives only inside the script, which no client interrupts.
_APPEND_ALL = """
for i, key in ipairs(KEYS) do
  local added = ARGV[i]
  if redis.call('APPEND', key, added) > #added then
    redis.call('COPY', key, 'SCRATCH', 'REPLACE')
    redis.call('RENAME', 'SCRATCH', key)
  end
end
return #KEYS
""".replace("SCRATCH", SCRATCH_KEY)


class Writes:
    """A transaction's writes to shared keys, gathered and sent as one command per key at the end.

    A batch of 100 decided leads would otherwise queue some 450 commands inside MULTI (its
    log appends, state, checkpoint, due time, list-index and aggregate updates), and at ~30 µs of client
    time each that was most of a live batch's cost. It answers the few pipeline methods the
    outcome, list-index and aggregate writers call; `flush` sends them before EXEC. Within one
    transaction no (key, member) is both added and removed, so the order of the commands does
    not matter.
    """

    def __init__(self) -> None:
        self.sets: dict[str, bytes] = {}
        self.deletes: list[str] = []
        self.zadds: dict[str, dict[str, int]] = {}
        self.zrems: dict[str, list[str]] = {}
        self.hsets: dict[str, dict[str, bytes | str]] = {}
        self.hdels: dict[str, list[str]] = {}
        self.sadds: dict[str, set[str]] = {}
        self.increments: dict[tuple[str, str], int] = {}
        # Lists appended to, in the order the leads were written (the actions record, outboxes).
        self.pushes: dict[str, list[str | bytes]] = {}
        # Strings appended to (the leads' event logs): one script for all of them.
        self.appends: dict[str, bytes] = {}

    def zadd(self, key: str, mapping: dict[str, int]) -> None:
        self.zadds.setdefault(key, {}).update(mapping)

    def zrem(self, key: str, *members: str) -> None:
        self.zrems.setdefault(key, []).extend(members)

    def hset(self, key: str, field: str, value: bytes | str) -> None:
        self.hsets.setdefault(key, {})[field] = value

    def hdel(self, key: str, *fields: str) -> None:
        self.hdels.setdefault(key, []).extend(fields)

    def sadd(self, key: str, *members: str) -> None:
        self.sadds.setdefault(key, set()).update(members)

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.increments[key, field] = self.increments.get((key, field), 0) + n

    def append(self, key: str, value: bytes) -> None:
        self.appends[key] = self.appends.get(key, b"") + value

    def flush(self, pipe: Any) -> None:
        if self.appends:
            pipe.eval(_APPEND_ALL, len(self.appends), *self.appends, *self.appends.values())
        if self.sets:
            pipe.mset(self.sets)
        if self.deletes:
            pipe.delete(*self.deletes)
        for key, fields in self.hdels.items():
            pipe.hdel(key, *fields)
        for key, members in self.zrems.items():
            pipe.zrem(key, *members)
        for key, mapping in self.hsets.items():
            pipe.hset(key, mapping=mapping)
        for key, scores in self.zadds.items():
            pipe.zadd(key, scores)
        for key, values in self.sadds.items():
            pipe.sadd(key, *sorted(values))
        for (key, field), n in self.increments.items():
            if n:
                pipe.hincrby(key, field, n)
        for key, items in self.pushes.items():
            pipe.rpush(key, *items)
            if key == ACTIONS_KEY:
                pipe.ltrim(ACTIONS_KEY, -ACTIONS_KEPT, -1)


def queue_outcome(
    pipe: Any,
    lead: Lead,
    outcome: Outcome,
    had_state: bool = True,
    writes: Writes | None = None,
    old_state: bytes | None = None,
) -> None:
    """Queue a decided outcome: checkpoint, state record, due time, recorded and outbound actions.

    With `writes`, its key writes join the transaction's (flushed by the caller). `old_state`:
    the state record's bytes as read (watched) in this transaction, not written again if equal.
    """
    batch = writes if writes is not None else Writes()
    skey = state_key(*lead)
    if outcome.checkpoint is not None:
        batch.sets[checkpoint_key(*lead)] = outcome.checkpoint
    else:
        # No checkpoint (every event dated after `now`): an older one would miss them.
        batch.deletes.append(checkpoint_key(*lead))
    if outcome.state is not None or had_state or outcome.actions:
        # (Not the common case, an ACTIVE lead without decisions before and after: a due
        # entry only ever exists beside a state record, so there is nothing more to write.)
        if outcome.state is None:
            batch.deletes.append(skey)
        elif not outcome.unchanged:
            # msgspec's encoder: the compact JSON json.dumps wrote, several times faster.
            record = staterecord.encode(outcome.state)
            if record != old_state:  # (a live batch that changed nothing: the same bytes)
                batch.sets[skey] = record
        member = due_member(*lead)
        if outcome.due_ms is None:
            batch.zrem(DUE_KEY, member)
        else:
            batch.zadd(DUE_KEY, {member: outcome.due_ms})
    if outcome.actions:
        # The record of decided actions keeps compact entries (worker/actionrecord.py, ~40 B
        # against ~210 as JSON); the outbox does not: its entries are read by the drain, the
        # deferral and the upgrades as JSON.
        batch.pushes.setdefault(ACTIONS_KEY, []).extend(actionrecord.encode(a) for a in outcome.actions)
        live = [json.dumps(a, separators=(",", ":")) for a in outcome.actions if not a.get("dry_run")]
        if live:
            batch.pushes.setdefault(outbox_key(lead[0]), []).extend(live)
    if writes is None:
        batch.flush(pipe)
