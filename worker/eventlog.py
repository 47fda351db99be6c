"""The per-lead event log, packed for Redis.

A lead's history is one Redis string: a version byte, then one record per distinct event.
A record is a fixed 12-byte header `<6sIbB`: the 6-byte event key; the occurred-at time as
a signed 40-bit count of ms from 2030-01-01 (low 32 bits, then the high 8); the type code,
its top bit set when the event carries data. A time outside those 40 bits (before mid-2012
or after mid-2047: a backfill reaching far back, or HubSpot's `hs_timestamp` taken as it
comes) sets the type's next bit and follows the header as 8 bytes of epoch ms. An event
with data then adds the data's length (1 byte below 128, else a LEB128 varint) and the data
as msgpack, its known field names as one-byte codes (`DATA_NAMES`: `{"follow_up": true}`
is 3 bytes, not 18 of JSON); data msgpack cannot give back as JSON does (a nested object, an
integer past 64 bits, an unpaired surrogate) is stored as 0xc1 and its JSON. 12 bytes for an event without data,
against ~150 for a JSON object: the memory budget is per tracked lead, and a lead keeps its
events of the retention horizon, up to a hundred and more.

The event key is the first 6 bytes of a keyed-free BLAKE2b-64 digest of `crm \\0 event id`:
the dedup key that lets a redelivered event be recognised, without storing the CRM's id.
Keys only have to tell apart the events of one lead: with the ~100 events a lead keeps, a new
event is taken for one it already holds with odds of about 1 in 3·10^12 (and 1 in 3·10^11
for a lead keeping 1,000): at ten million events a day, once in some 800 years.

Versions: 5, the records alone; 6, a 4-byte length and the `Fold` of the events older than
the policy's retention horizon (msgpack, compressed by worker/compression.py), then the
records of the events it kept. Logs of the earlier record formats are read as they are, and
appended to in their own records (a new event's key padded with two zero bytes); a log moves
to the current format when it is next written whole (its fold, a CRM merge):

    versions 1, 2   before 2026-12-05   `<8sqBH` header: 8-byte key, epoch ms, type, data length; JSON data (19 B)
    versions 3, 4   2026-12-05          `<8sIhB` header: 8-byte key, 48-bit epoch ms; `<H` length, JSON data (15 B)

An old record's key is read as its first 6 bytes, so every key in memory has one length.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from rules.counters import LeadCounters, LoggedEvent, fold
from rules.events import RECORD_KEY, TYPE_CODES, TYPES_BY_CODE, VERSION_KEY, Event, EventType
from rules.running import Running, decode_running
from worker import compression
from worker.errors import StoreError

VERSION = b"\x05"
FOLDED = b"\x06"
# Record formats, named by the version byte of their unfolded log (its folded one is one more).
RECORDS_19, RECORDS_15, RECORDS_12 = 1, 3, 5
_FORMAT_OF_VERSION = {1: RECORDS_19, 2: RECORDS_19, 3: RECORDS_15, 4: RECORDS_15, 5: RECORDS_12, 6: RECORDS_12}
_FOLDED_VERSIONS = frozenset({2, 4, 6})
_HEADER_19 = struct.Struct("<8sqBH")
_HEADER_15 = struct.Struct("<8sIhB")
_HEADER = struct.Struct("<6sIbB")
_LENGTH_15 = struct.Struct("<H")
_WIDE = struct.Struct("<q")
_HAS_DATA = 0x80
_WIDE_TIME = 0x40  # (type codes stay below it: tests/worker/test_log_format.py)
_CODE_BITS = 0x3F
_FOLD_LENGTH = struct.Struct("<I")
KEY_BYTES = 6
_PAD = b"\x00" * (8 - KEY_BYTES)  # a key in a record of an earlier format
# The current records' time: ms from 2030-01-01T00:00:00Z in 40 signed bits (mid-2012 to mid-2047).
EPOCH_MS = 1_893_456_000_000
_MIN_REL, _MAX_REL = -(2**39), 2**39 - 1
# The 15-byte records' time: 48 signed bits of epoch ms (years ~2430 BC to ~6430 AD).
_MIN_MS_15, _MAX_MS_15 = -(2**47), 2**47 - 1
# Data field names stored as one-byte codes (msgpack positive fixints). Append only: a code,
# once written, keeps its name forever, or stored data changes meaning. A name missing here
# is stored as it is (tests/worker/test_log_format.py checks rules.events.DATA_FIELDS is covered).
DATA_NAMES = (
    "follow_up",
    "hard",
    "meeting_id",
    "first_meeting",
    "reason",
    "expires_at",
    "minutes",
    "deal_id",
    "amount",
    "stage",
    "won",
    "source",
    "segment",
    "priority",
    "email",
    "converted",
    "channels",
    "decision_at",
    RECORD_KEY,
    VERSION_KEY,
)
_DATA_CODES = {name: code for code, name in enumerate(DATA_NAMES)}
_JSON_DATA = b"\xc1"  # (a byte msgpack never writes) JSON follows


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
    """Return the 6-byte dedup key of one event: the first 6 bytes of the 8 earlier versions stored."""
    return hashlib.blake2b(f"{crm}\0{event_id}".encode(), digest_size=8).digest()[:KEY_BYTES]


def to_logged(event: Event) -> LoggedEvent:
    """Return the stored form of a canonical event."""
    return LoggedEvent(event.occurred_ms, event.type, event_key(event.crm, event.id), event.data)


def _packable(value: Any) -> bool:
    """Whether msgpack gives `value` back as a JSON round trip would (no object, no int past 64 bits)."""
    if isinstance(value, list | tuple):
        return all(_packable(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    return value is None or isinstance(value, str | float | bool)


_DATA_ENCODER = msgspec.msgpack.Encoder()


def pack_data(data: Any) -> bytes:
    """`data` as the current records hold it: msgpack, known field names as codes; else 0xc1 and JSON."""
    if isinstance(data, dict) and all(isinstance(k, str) and _packable(v) for k, v in data.items()):
        # Sorted, as the JSON of the earlier records was: decoded, the keys come back in that order.
        try:
            return _DATA_ENCODER.encode({_DATA_CODES.get(k, k): data[k] for k in sorted(data)})
        except UnicodeEncodeError:
            pass  # a lone surrogate (a JSON "\ud800" escape): UTF-8 cannot hold it, JSON's escapes can
    return _JSON_DATA + json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def unpack_data(raw: bytes) -> Any:
    """The `data` `pack_data` packed."""
    if raw[:1] == _JSON_DATA:
        return _data(raw[1:])
    packed = msgspec.msgpack.decode(raw)
    return {DATA_NAMES[k] if isinstance(k, int) else k: v for k, v in packed.items()}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        byte = blob[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7


def encode(events: Iterable[LoggedEvent], records: int = RECORDS_12) -> bytes:
    """Pack events as log records (without the version byte), in the current format or, for
    appending to a log written in one, an earlier one (`RECORDS_15`, `RECORDS_19`)."""
    if records != RECORDS_12:
        return _encode_earlier(events, records)
    parts = []
    for ev in events:
        code, rel = TYPE_CODES[ev.type], ev.occurred_ms - EPOCH_MS
        data = pack_data(ev.data) if ev.data else b""
        if data:
            code |= _HAS_DATA
        if _MIN_REL <= rel <= _MAX_REL:
            parts.append(_HEADER.pack(ev.key, rel & 0xFFFFFFFF, rel >> 32, code))
        else:
            parts.append(_HEADER.pack(ev.key, 0, 0, code | _WIDE_TIME))
            parts.append(_WIDE.pack(ev.occurred_ms))
        if data:
            parts.append(_varint(len(data)))
            parts.append(data)
    return b"".join(parts)


def _encode_earlier(events: Iterable[LoggedEvent], records: int) -> bytes:
    parts = []
    for ev in events:
        data = json.dumps(ev.data, separators=(",", ":"), sort_keys=True).encode() if ev.data else b""
        code, at, key = TYPE_CODES[ev.type], ev.occurred_ms, ev.key + _PAD
        if records == RECORDS_19:
            parts.append(_HEADER_19.pack(key, at, code, len(data)))
            parts.append(data)
            continue
        if data:
            code |= _HAS_DATA
        if _MIN_MS_15 <= at <= _MAX_MS_15:
            parts.append(_HEADER_15.pack(key, at & 0xFFFFFFFF, at >> 32, code))
        else:
            parts.append(_HEADER_15.pack(key, 0, 0, code | _WIDE_TIME))
            parts.append(_WIDE.pack(at))
        if data:
            parts.append(_LENGTH_15.pack(len(data)))
            parts.append(data)
    return b"".join(parts)


def record_format(blob: bytes | None) -> int:
    """The format of the records appended to this log (None: a log yet to be created)."""
    if not blob:
        return RECORDS_12
    return format_of_version(blob[0])


def format_of_version(version: int) -> int:
    """The record format of a log of this version byte."""
    try:
        return _FORMAT_OF_VERSION[version]
    except KeyError:
        raise ValueError(f"unknown event log version {bytes([version])!r}") from None


def _records_start(blob: bytes) -> int:
    """Where the records begin in a log (after the version byte, and the fold if any)."""
    format_of_version(blob[0])
    if blob[0] in _FOLDED_VERSIONS:
        (length,) = _FOLD_LENGTH.unpack_from(blob, 1)
        return 1 + _FOLD_LENGTH.size + length
    return 1


def decode(blob: bytes | None) -> list[LoggedEvent]:
    """Unpack a log's kept events (not its fold); an absent key is an empty history."""
    if not blob:
        return []
    return decode_records(blob, _records_start(blob), record_format(blob))


def read(blob: bytes | None) -> Log:
    """Unpack a whole log: its fold, if any, and its kept events."""
    if not blob:
        return Log(None, [])
    start = _records_start(blob)
    found = None
    if blob[0] in _FOLDED_VERSIONS:
        found = _FOLD_DECODER.decode(compression.unpack(blob[1 + _FOLD_LENGTH.size : start]))
    return Log(found, decode_records(blob, start, record_format(blob)))


def write(log: Log) -> bytes:
    """Pack a whole log (a fold and the events kept after it, or events alone)."""
    if log.fold is None:
        return VERSION + encode(log.events)
    packed = compression.pack(fold_bytes(log.fold))
    return FOLDED + _FOLD_LENGTH.pack(len(packed)) + packed + encode(log.events)


def fold_bytes(found: Fold) -> bytes:
    """A fold, msgpack-packed (`write` stores it compressed)."""
    return _FOLD_ENCODER.encode(found)


def decode_records(blob: bytes, pos: int = 0, records: int = RECORDS_12) -> list[LoggedEvent]:
    """Unpack records (as `encode` packs them, in the format `records`) from `pos` on."""
    if records != RECORDS_12:
        return _decode_earlier(blob, pos, records)
    out = []
    end, size = len(blob), _HEADER.size
    while pos < end:
        key, low, high, tag = _HEADER.unpack_from(blob, pos)
        pos += size
        if tag & _WIDE_TIME:
            (at,) = _WIDE.unpack_from(blob, pos)
            pos += _WIDE.size
        else:
            at = EPOCH_MS + (high << 32) + low
        if tag & _HAS_DATA:
            length, pos = _read_varint(blob, pos)
            data = unpack_data(blob[pos : pos + length])
            pos += length
        else:
            data = {}
        out.append(LoggedEvent(at, TYPES_BY_CODE[tag & _CODE_BITS], key, data))
    return out


def _decode_earlier(blob: bytes, pos: int, records: int) -> list[LoggedEvent]:
    out = []
    end = len(blob)
    if records == RECORDS_19:
        size = _HEADER_19.size
        while pos < end:
            key, at, code, length = _HEADER_19.unpack_from(blob, pos)
            pos += size
            data = _data(blob[pos : pos + length]) if length else {}
            pos += length
            out.append(LoggedEvent(at, TYPES_BY_CODE[code], key[:KEY_BYTES], data))
        return out
    size, length_size = _HEADER_15.size, _LENGTH_15.size
    while pos < end:
        key, low, high, tag = _HEADER_15.unpack_from(blob, pos)
        pos += size
        at = (high << 32) + low
        if tag & _WIDE_TIME:
            (at,) = _WIDE.unpack_from(blob, pos)
            pos += _WIDE.size
        if tag & _HAS_DATA:
            (length,) = _LENGTH_15.unpack_from(blob, pos)
            pos += length_size
            data = _data(blob[pos : pos + length])
            pos += length
        else:
            data = {}
        out.append(LoggedEvent(at, TYPES_BY_CODE[tag & _CODE_BITS], key[:KEY_BYTES], data))
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
    pos, end, records = _records_start(blob), len(blob), record_format(blob)
    if records == RECORDS_19:
        size = _HEADER_19.size
        while pos < end:
            key, _, _, length = _HEADER_19.unpack_from(blob, pos)
            found.add(key[:KEY_BYTES])
            pos += size + length
        return found
    header = _HEADER if records == RECORDS_12 else _HEADER_15
    size = header.size
    while pos < end:
        key, _, _, tag = header.unpack_from(blob, pos)
        found.add(key[:KEY_BYTES])
        pos += size
        if tag & _WIDE_TIME:
            pos += _WIDE.size
        if tag & _HAS_DATA:
            if records == RECORDS_12:
                length, pos = _read_varint(blob, pos)
            else:
                (length,) = _LENGTH_15.unpack_from(blob, pos)
                pos += _LENGTH_15.size
            pos += length
    return found


def append(blob: bytes | None, fresh: Iterable[LoggedEvent]) -> bytes:
    """Return `blob` with `fresh` records appended (order inside a log does not matter)."""
    return (blob or VERSION) + encode(fresh, record_format(blob))


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
