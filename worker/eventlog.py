"""The per-lead event log, packed for Redis.

A lead's history is one Redis string: a version byte, then one record per
distinct event — a fixed header `<8sqBH` (8-byte event key, occurred-at epoch
ms, type code, data length) followed by the event's `data` as compact JSON.
About 20 bytes for an event without data, against ~150 for a JSON object: the
memory budget is per tracked lead, and most leads only ever see a few touches.

The event key is a keyed-free BLAKE2b digest of `crm \\0 event id`: the dedup key
that lets a redelivered event be recognised, without storing the CRM's id.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable

from rules.counters import LoggedEvent
from rules.events import TYPE_CODES, TYPES_BY_CODE, Event

VERSION = b"\x01"
_HEADER = struct.Struct("<8sqBH")
KEY_BYTES = 8


def event_key(crm: str, event_id: str) -> bytes:
    """Return the 8-byte dedup key of one event."""
    return hashlib.blake2b(f"{crm}\0{event_id}".encode(), digest_size=KEY_BYTES).digest()


def to_logged(event: Event) -> LoggedEvent:
    """Return the stored form of a canonical event."""
    return LoggedEvent(event.occurred_ms, event.type, event_key(event.crm, event.id), event.data)


def encode(events: Iterable[LoggedEvent]) -> bytes:
    """Pack events as log records (without the version byte)."""
    parts = []
    for ev in events:
        data = json.dumps(ev.data, separators=(",", ":"), sort_keys=True).encode() if ev.data else b""
        parts.append(_HEADER.pack(ev.key, ev.occurred_ms, TYPE_CODES[ev.type], len(data)))
        parts.append(data)
    return b"".join(parts)


def decode(blob: bytes | None) -> list[LoggedEvent]:
    """Unpack a whole log; an absent key is an empty history."""
    if not blob:
        return []
    if blob[:1] != VERSION:
        raise ValueError(f"unknown event log version {blob[:1]!r}")
    return decode_records(blob, 1)


def decode_records(blob: bytes, pos: int = 0) -> list[LoggedEvent]:
    """Unpack records (as `encode` packs them) from `pos` on."""
    out = []
    end, size = len(blob), _HEADER.size
    while pos < end:
        key, at, code, length = _HEADER.unpack_from(blob, pos)
        pos += size
        data = json.loads(blob[pos : pos + length]) if length else {}
        pos += length
        out.append(LoggedEvent(at, TYPES_BY_CODE[code], key, data))
    return out


def keys(blob: bytes | None) -> set[bytes]:
    """Return the dedup keys present in a log, without decoding the data."""
    found: set[bytes] = set()
    if not blob:
        return found
    pos, end, size = 1, len(blob), _HEADER.size
    while pos < end:
        key, _, _, length = _HEADER.unpack_from(blob, pos)
        found.add(key)
        pos += size + length
    return found


def append(blob: bytes | None, fresh: Iterable[LoggedEvent]) -> bytes:
    """Return `blob` with `fresh` records appended (order inside a log does not matter)."""
    return (blob or VERSION) + encode(fresh)
