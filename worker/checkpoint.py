"""A lead's checkpoint as stored next to its event log (`pruner:ck:{crm}:{lead_id}`).

One msgpack array, compressed (worker/compression.py; a checkpoint written before that is read
as it is): format version, the digest of the policy it was computed under, the
checkpoint time, the replay's running state (rules/lifecycle.py `Running`, kept as raw
bytes so that a record of another shape is replayed rather than misread), the events after
the checkpoint time (events dated after the evaluation's `now`, usually none: eventlog
records), the rules' progress as the last evaluation computed it and the lead's next due
time (both read by `explain` and `/leads`), its row in the aggregates, and when the oldest
event its log keeps happened.

Invariant the store keeps: the tail holds exactly the log's events dated after `at_ms`.
So a batch whose events are all later than `at_ms` needs neither the log nor a replay of
it: its duplicates are in the tail, and the replay continues from the running state.
"""

from __future__ import annotations

from typing import Any

import msgspec

from rules.counters import LoggedEvent
from rules.running import Running, decode_checkpoint
from worker import compression, eventlog
from worker.errors import StoreError

FORMAT = 3
# Earlier formats: the same, the tail in the log records of then (worker/eventlog.py): format 1
# (before 2026-12-05) in 19-byte records, format 2 (2026-12-05) in 15-byte ones.
_TAIL_RECORDS = {1: eventlog.RECORDS_19, 2: eventlog.RECORDS_15, 3: eventlog.RECORDS_12}
# `at_ms` of a record holding no running state (every event of the lead dated after the
# last evaluation's `now`): every batch is then "late", and replays the log.
NO_CHECKPOINT = 2**62
NO_STATE = b"\xc0"  # msgpack nil, in place of the running state
UNKNOWN = -1  # `Stored.oldest` of a checkpoint written before logs were folded


class Stored(msgspec.Struct, array_like=True):
    format: int
    policy: str
    at_ms: int
    running: msgspec.Raw
    tail: bytes = b""
    progress: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # The lead's row in the loss / conversion aggregates (worker/aggregates.py).
    row: list[str] | None = None
    # When the oldest event its log keeps happened (None: it keeps none; UNKNOWN: written
    # before logs were folded): decides, without reading the log, when to fold it.
    oldest: int | None = UNKNOWN
    # When the sweep looks at the lead again (None: never; UNKNOWN: written before 2026-12-05,
    # when the state record held it as `next_due`): `/leads/<crm>/<id>` and `explain` show it.
    due: int | None = UNKNOWN

    def events_after(self) -> list[LoggedEvent]:
        """The log's events dated after the checkpoint."""
        return eventlog.decode_records(self.tail, 0, _TAIL_RECORDS[self.format])

    def state(self) -> Running | None:
        """The running state, or None when it was written with other fields."""
        return decode_checkpoint(bytes(self.running))


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Stored)


def pack(
    policy: str,
    at_ms: int,
    running: bytes,
    tail: list[LoggedEvent],
    progress: dict[str, dict[str, Any]],
    row: list[str] | None = None,
    oldest: int | None = None,
    due: int | None = None,
) -> bytes:
    """Pack a checkpoint: `running` as `rules.running.encode_checkpoint` packed it."""
    blob = Stored(FORMAT, policy, at_ms, msgspec.Raw(running), eventlog.encode(tail), progress, row, oldest, due)
    return compression.pack(_ENCODER.encode(blob))


def unpack(blob: bytes | None) -> Stored | None:
    """Read a stored checkpoint; None when absent, of another format or damaged (a full replay then).

    A checkpoint is derived from the log, so one that cannot be read costs a replay, never the
    batch: unlike a damaged log or state record (the events, the actions already sent), which
    fail the job loudly rather than be guessed at.
    """
    if not blob:
        return None
    try:
        stored = _DECODER.decode(compression.unpack(blob))
    except (msgspec.DecodeError, StoreError):
        return None
    return stored if stored.format in _TAIL_RECORDS else None
