"""A lead's state record (`pruner:state:{crm}:{lead_id}`, compressed JSON): what decide writes and everyone reads.

Written by worker/decide.py, read by the store (the list index, erasure), the drain (is the
lead SUPPRESSED or WON now?), task texts, `/leads/<crm>/<id>` and `pruner explain`. Every key
is optional to a reader: records written by older versions lack the newer ones. Every reader
goes through `decode`: the bytes are compressed (worker/compression.py), or plain JSON when
written before that.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

from worker import compression


class StateRecord(TypedDict, total=False):
    state: str  # a rules.states.State value
    loss_reason: str | None
    decisions: list[dict[str, Any]]  # the latest (rules.states.Decision.to_json), oldest first
    decisions_total: int
    acted: list[str]  # both names of the decisions already acted on (worker/decide.py)
    # ...and of those a dry run "acted" on, sending nothing: a live worker acts on them for real.
    dry_acted: list[str]
    as_of_ms: int  # the `now` of the evaluation that wrote it
    # RFC 3339: when the sweep looks at the lead again. Written until 2026-12-05; now in the
    # checkpoint (`Stored.due`), so that a batch that moves only the due time leaves this record be.
    next_due: str | None
    suppression_list: bool  # the person was on the suppression list when first seen
    suppression_channels: list[str]


_ENCODER = msgspec.json.Encoder()


def encode(record: StateRecord | dict[str, Any]) -> bytes:
    """The record as stored: compact JSON, compressed (worker/compression.py)."""
    return compression.pack(_ENCODER.encode(record))


def decode(raw: bytes | str) -> StateRecord:
    """A stored record, compressed or (written before 2026-12-05) plain JSON."""
    if isinstance(raw, str):
        raw = raw.encode()
    return msgspec.json.decode(compression.unpack(raw))


def decode_or_none(raw: bytes | str | None) -> StateRecord | None:
    return decode(raw) if raw else None
