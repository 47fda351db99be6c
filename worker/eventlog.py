"""The per-lead event log, packed for Redis.

A lead's history is one Redis string: a version byte, then one record per distinct event.
A record is a fixed header `<8sIhB` (the 8-byte event key; the occurred-at epoch ms as its
low 32 bits and its high 16, signed; the type code, its top bit set when the event carries
data), then, for an event with data, a 2-byte length and the `data` as compact JSON. A time
outside those 48 bits (past year 6429: HubSpot's `hs_timestamp` is taken as it comes) sets
the type's next bit, and follows the header as 8 bytes. 15 bytes for an event without data,
against ~150 for a JSON object: the memory budget is per tracked lead, and a lead keeps its
events of the retention horizon, up to a hundred and more.

The event key is a keyed-free BLAKE2b digest of `crm \\0 event id`: the dedup key
that lets a redelivered event be recognised, without storing the CRM's id.

Versions: 3, the records alone; 4, a 4-byte length and the `Fold` of the events older than
the policy's retention horizon (msgpack, compressed by worker/compression.py), then the
records of the events it kept. Versions 1 and 2 (the same, with the records of before
2026-12-05: a `<8sqBH` header, 19 bytes) are read as they are, and appended to in their own
format; a log moves to the current format when it is next written whole (its fold).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from rules.counters import LeadCounters, LoggedEvent, fold
from rules.events import RECORD_KEY, TYPE_CODES, TYPES_BY_CODE, Event, EventType
from rules.running import Running, decode_running
from worker import compression
from worker.errors import StoreError

VERSION = b"\x03"
FOLDED = b"\x04"
# The formats of before 2026-12-05: read, and appended to in their own records.
OLD_VERSION = b"\x01"
OLD_FOLDED = b"\x02"
_OLD_HEADER = struct.Struct("<8sqBH")
_HEADER = struct.Struct("<8sIhB")
_LENGTH = struct.Struct("<H")
_WIDE = struct.Struct("<q")
_HAS_DATA = 0x80
_WIDE_TIME = 0x40  # (type codes stay below it: tests/worker/test_log_format.py)
_CODE_BITS = 0x3F
_FOLD_LENGTH = struct.Struct("<I")
KEY_BYTES = 8
# What the 48 bits of a record's time hold: years ~2430 BC to ~6430 AD.
_MIN_MS, _MAX_MS = -(2**47), 2**47 - 1


class Fold(msgspec.Struct, array_like=True):
    """What is left of a lead's events older than the retention horizon.

    `running` is the replay's running state right after instant `at_ms` (rules/running.py):
    replaying the kept events from it is replaying the whole story, so no counter, episode
    or decision is lost with the events. An event dated at or before `at_ms` that arrives
    now is past the horizon: counted and ignored (worker/store.py). `emails` are the folded
    profile events' addresses, which an erasure must still find and suppress.
    """

    at_ms: int
    running: msgspec.Raw
    events: int
    emails: list[str] = msgspec.field(default_factory=list)

    def state(self) -> Running:
        """The running state at the fold.

        Its fields are only ever appended, with defaults, so a fold written by an older
        version still reads; one that does not is refused loudly rather than restarted
        from nothing (its events are gone).
        """
        try:
            return decode_running(bytes(self.running))
        except msgspec.DecodeError as exc:
            raise StoreError(f"a lead's folded history cannot be read by this version: {exc}") from None


class Log(NamedTuple):
    """A decoded log: the fold of its oldest events (None: nothing folded) and the kept events."""

    fold: Fold | None
    events: list[LoggedEvent]

    def counters(self) -> LeadCounters:
        """The lead's counters over its whole story, folded part included (as the replay counts them)."""
        if self.fold is None:
            return fold(self.events)
        running = self.fold.state()
        # A new version of a record the fold counted is past the horizon (rules/lifecycle.py).
        events = [e for e in self.events if not (e.data and e.data.get(RECORD_KEY) in running.records)]
        return fold(events, running.counters)

    def emails(self) -> set[str]:
        """Every address the lead's profile events carried, folded ones included."""
        found = set(self.fold.emails) if self.fold is not None else set()
        found.update(
            ev.data["email"] for ev in self.events if ev.type is EventType.LEAD_PROFILE and ev.data.get("email")
        )
        return found


_FOLD_ENCODER = msgspec.msgpack.Encoder()
_FOLD_DECODER = msgspec.msgpack.Decoder(Fold)


def event_key(crm: str, event_id: str) -> bytes:
    """Return the 8-byte dedup key of one event."""
    return hashlib.blake2b(f"{crm}\0{event_id}".encode(), digest_size=KEY_BYTES).digest()


def to_logged(event: Event) -> LoggedEvent:
    """Return the stored form of a canonical event."""
    return LoggedEvent(event.occurred_ms, event.type, event_key(event.crm, event.id), event.data)


def encode(events: Iterable[LoggedEvent], compact: bool = True) -> bytes:
    """Pack events as log records (without the version byte); `compact=False`: the records of
    versions 1 and 2, for appending to a log written in them."""
    parts = []
    for ev in events:
        data = json.dumps(ev.data, separators=(",", ":"), sort_keys=True).encode() if ev.data else b""
        code, at = TYPE_CODES[ev.type], ev.occurred_ms
        if not compact:
            parts.append(_OLD_HEADER.pack(ev.key, at, code, len(data)))
            parts.append(data)
            continue
        if data:
            code |= _HAS_DATA
        if _MIN_MS <= at <= _MAX_MS:
            parts.append(_HEADER.pack(ev.key, at & 0xFFFFFFFF, at >> 32, code))
        else:
            parts.append(_HEADER.pack(ev.key, 0, 0, code | _WIDE_TIME))
            parts.append(_WIDE.pack(at))
        if data:
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
    return b"".join(parts)


def is_compact(blob: bytes | None) -> bool:
    """Whether records appended to this log (None: a log yet to be created) are in the current format."""
    return not blob or blob[:1] not in (OLD_VERSION, OLD_FOLDED)


def _records_start(blob: bytes) -> int:
    """Where the records begin in a log (after the version byte, and the fold if any)."""
    if blob[:1] in (VERSION, OLD_VERSION):
        return 1
    if blob[:1] in (FOLDED, OLD_FOLDED):
        (length,) = _FOLD_LENGTH.unpack_from(blob, 1)
        return 1 + _FOLD_LENGTH.size + length
    raise ValueError(f"unknown event log version {blob[:1]!r}")


def decode(blob: bytes | None) -> list[LoggedEvent]:
    """Unpack a log's kept events (not its fold); an absent key is an empty history."""
    if not blob:
        return []
    return decode_records(blob, _records_start(blob), is_compact(blob))


def read(blob: bytes | None) -> Log:
    """Unpack a whole log: its fold, if any, and its kept events."""
    if not blob:
        return Log(None, [])
    start = _records_start(blob)
    found = None
    if blob[:1] in (FOLDED, OLD_FOLDED):
        found = _FOLD_DECODER.decode(compression.unpack(blob[1 + _FOLD_LENGTH.size : start]))
    return Log(found, decode_records(blob, start, is_compact(blob)))


def write(log: Log) -> bytes:
    """Pack a whole log (a fold and the events kept after it, or events alone)."""
    if log.fold is None:
        return VERSION + encode(log.events)
    packed = compression.pack(fold_bytes(log.fold))
    return FOLDED + _FOLD_LENGTH.pack(len(packed)) + packed + encode(log.events)


def fold_bytes(found: Fold) -> bytes:
    """A fold, msgpack-packed (`write` stores it compressed)."""
    return _FOLD_ENCODER.encode(found)


def decode_records(blob: bytes, pos: int = 0, compact: bool = True) -> list[LoggedEvent]:
    """Unpack records (as `encode` packs them, `compact` or not) from `pos` on."""
    if not compact:
        return _decode_old(blob, pos)
    out = []
    end, size, length_size = len(blob), _HEADER.size, _LENGTH.size
    while pos < end:
        key, low, high, tag = _HEADER.unpack_from(blob, pos)
        pos += size
        at = (high << 32) + low
        if tag & _WIDE_TIME:
            (at,) = _WIDE.unpack_from(blob, pos)
            pos += _WIDE.size
        if tag & _HAS_DATA:
            (length,) = _LENGTH.unpack_from(blob, pos)
            pos += length_size
            data = _data(blob[pos : pos + length])
            pos += length
        else:
            data = {}
        out.append(LoggedEvent(at, TYPES_BY_CODE[tag & _CODE_BITS], key, data))
    return out


def _decode_old(blob: bytes, pos: int) -> list[LoggedEvent]:
    out = []
    end, size = len(blob), _OLD_HEADER.size
    while pos < end:
        key, at, code, length = _OLD_HEADER.unpack_from(blob, pos)
        pos += size
        data = _data(blob[pos : pos + length]) if length else {}
        pos += length
        out.append(LoggedEvent(at, TYPES_BY_CODE[code], key, data))
    return out


def _data(raw: bytes) -> Any:
    # msgspec: a late event's replay decodes every kept record (json.loads was ~5x slower). What
    # msgspec refuses and json.dumps could have written (NaN) is read as before.
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def keys(blob: bytes | None) -> set[bytes]:
    """Return the dedup keys present in a log, without decoding the data."""
    found: set[bytes] = set()
    if not blob:
        return found
    pos, end = _records_start(blob), len(blob)
    if not is_compact(blob):
        size = _OLD_HEADER.size
        while pos < end:
            key, _, _, length = _OLD_HEADER.unpack_from(blob, pos)
            found.add(key)
            pos += size + length
        return found
    size, length_size = _HEADER.size, _LENGTH.size
    while pos < end:
        key, _, _, tag = _HEADER.unpack_from(blob, pos)
        found.add(key)
        pos += size
        if tag & _WIDE_TIME:
            pos += _WIDE.size
        if tag & _HAS_DATA:
            pos += length_size + _LENGTH.unpack_from(blob, pos)[0]
    return found


def append(blob: bytes | None, fresh: Iterable[LoggedEvent]) -> bytes:
    """Return `blob` with `fresh` records appended (order inside a log does not matter)."""
    return (blob or VERSION) + encode(fresh, is_compact(blob))


# Kept even when dated before a lead's fold, moved to just after it: an objection or an
# erasure request is never lost to the retention horizon (only ever more suppression; a
# late re-consent is not moved, since it could then undo a later objection). Nor is a
# break-up task's record (worker/upgrades.py dates one at its old decision): a lead folded
# while waiting for it would wait for good; its grace starts at the fold instead.
_NEVER_PAST = frozenset({EventType.DO_NOT_CONTACT, EventType.ERASURE_REQUESTED, EventType.BREAKUP_TASK_CREATED})


def past_horizon(new: list[LoggedEvent], fold_at: int) -> tuple[list[LoggedEvent], int]:
    """The events of `new` to apply to a log folded at `fold_at`, and how many are past the horizon.

    Those (dated at or before the fold) are counted and ignored: the story they belong in is
    folded already (`Fold`).
    """
    kept, past = [], 0
    for ev in new:
        if ev.occurred_ms > fold_at:
            kept.append(ev)
        elif ev.type in _NEVER_PAST:
            kept.append(ev._replace(occurred_ms=fold_at + 1))
        else:
            past += 1
    return kept, past
