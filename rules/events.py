"""Canonical events: the one vocabulary every inbound adapter produces.

`parse_batch` validates a decoded `/webhooks/events` body and names the first bad
field (`events[3].data.minutes`). `Event.to_wire` / `Event.from_wire` give the
compact, plain-JSON form that travels inside RQ jobs.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

from rules.errors import SchemaError

MAX_EVENTS_PER_BATCH = 1000
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 1000
# Integer fields (minutes logged): anything larger is a sender's bug, and unbounded
# integers would overflow the float arithmetic of the rules.
MAX_POS_INT = 1_000_000_000
# Events stamped further ahead than this are a sender's clock bug, not the future:
# accepting them would let one bad clock hold a lead's silence counters hostage.
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000


class EventType(StrEnum):
    EMAIL_SENT = "email_sent"
    EMAIL_REPLIED = "email_replied"
    EMAIL_BOUNCED = "email_bounced"
    CALL_ATTEMPTED = "call_attempted"
    CALL_CONNECTED = "call_connected"
    MEETING_BOOKED = "meeting_booked"
    MEETING_HELD = "meeting_held"
    MEETING_NO_SHOW = "meeting_no_show"
    MEETING_RESCHEDULED = "meeting_rescheduled"
    NOT_INTERESTED = "not_interested"
    DECISION_NO = "decision_no"
    PROPOSAL_SENT = "proposal_sent"
    TIME_LOGGED = "time_logged"
    DEAL_UPDATED = "deal_updated"
    LEAD_PROFILE = "lead_profile"
    DO_NOT_CONTACT = "do_not_contact"
    ERASURE_REQUESTED = "erasure_requested"
    REOPENED = "reopened"
    CONSENT_GIVEN = "consent_given"
    # The break-up task exists in the CRM: its grace period starts (docs/lifecycle.md guardrail 7).
    # Recorded by Pruner when the CRM confirms the task; a sender creating tasks itself may send it.
    BREAKUP_TASK_CREATED = "breakup_task_created"


class Crm(StrEnum):
    HUBSPOT = "hubspot"
    SALESFORCE = "salesforce"


# Stable one-byte codes for the binary event log in Redis. Append only: a code,
# once used, keeps its meaning forever, or stored histories change type.
TYPE_CODES: dict[EventType, int] = {t: i for i, t in enumerate(EventType, start=1)}
TYPES_BY_CODE: dict[int, EventType] = {code: t for t, code in TYPE_CODES.items()}

CHANNELS = ("email", "phone", "all")

# What `data` may hold per type: field -> (kind, required).
_STR, _BOOL, _NUMBER, _POS_INT, _TIME, _CHANNELS = "str", "bool", "number", "pos_int", "time", "channels"
DATA_FIELDS: dict[EventType, dict[str, tuple[str, bool]]] = {
    EventType.EMAIL_SENT: {"follow_up": (_BOOL, False)},
    EventType.EMAIL_REPLIED: {},
    EventType.EMAIL_BOUNCED: {"hard": (_BOOL, False)},
    EventType.CALL_ATTEMPTED: {},
    EventType.CALL_CONNECTED: {},
    EventType.MEETING_BOOKED: {"meeting_id": (_STR, False)},
    EventType.MEETING_HELD: {"meeting_id": (_STR, False)},
    EventType.MEETING_NO_SHOW: {"meeting_id": (_STR, False)},
    EventType.MEETING_RESCHEDULED: {"meeting_id": (_STR, False), "first_meeting": (_BOOL, False)},
    EventType.NOT_INTERESTED: {"reason": (_STR, False)},
    EventType.DECISION_NO: {"reason": (_STR, True)},
    EventType.PROPOSAL_SENT: {"expires_at": (_TIME, True)},
    EventType.TIME_LOGGED: {"minutes": (_POS_INT, True)},
    # `won`: the CRM says whether the deal is won (Salesforce `IsWon`); otherwise the stage says it.
    EventType.DEAL_UPDATED: {
        "deal_id": (_STR, False),
        "amount": (_NUMBER, False),
        "stage": (_STR, False),
        "won": (_BOOL, False),
    },
    EventType.LEAD_PROFILE: {
        "source": (_STR, False),
        "segment": (_STR, False),
        "priority": (_STR, False),
        "email": (_STR, False),
        # The person became a customer (HubSpot lifecycle stage, Salesforce `IsConverted`).
        "converted": (_BOOL, False),
    },
    EventType.DO_NOT_CONTACT: {"channels": (_CHANNELS, False)},
    EventType.ERASURE_REQUESTED: {},
    EventType.REOPENED: {},
    EventType.CONSENT_GIVEN: {},
    # `decision_at`: the time of the break-up decision the task was created for (worker/actions.py).
    EventType.BREAKUP_TASK_CREATED: {"decision_at": (_TIME, False)},
}

_EVENT_KEYS = ("id", "type", "crm", "lead_id", "occurred_at", "data", "version")
# Where a versioned event keeps its version in `data` (keys no canonical `data` field can have):
# the CRM record it is a version of, hashed, and that record's modification time (epoch ms).
RECORD_KEY, VERSION_KEY = "~r", "~v"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


class Event(NamedTuple):
    """One canonical event; `occurred_ms` is UTC epoch milliseconds.

    A NamedTuple, not a frozen dataclass: batches of 1,000 are built per request
    and the dataclass constructor costs several times more.
    """

    id: str
    type: EventType
    crm: Crm
    lead_id: str
    occurred_ms: int
    data: Mapping[str, Any]

    def to_wire(self) -> list[Any]:
        """Return the compact JSON-able form used inside queued jobs."""
        return [self.id, self.type.value, self.crm.value, self.lead_id, self.occurred_ms, dict(self.data)]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Event:
        """Rebuild an event from `to_wire` output (already validated at ingest)."""
        eid, etype, crm, lead_id, occurred_ms, data = item
        return cls(eid, EventType(etype), Crm(crm), lead_id, int(occurred_ms), data)


def parse_rfc3339_ms(value: object, where: str) -> int:
    """Parse an RFC 3339 timestamp with offset into UTC epoch milliseconds."""
    if isinstance(value, str) and len(value) == 20 and _is_plain_utc(value):
        # The common `2026-11-20T10:00:00Z`: integer arithmetic, no regex, no datetime.
        day = _epoch_day(value[:10])
        if day is None:
            raise SchemaError(where, f"is not a valid date-time, got {value!r:.60}")
        hour, minute, second = int(value[11:13]), int(value[14:16]), int(value[17:19])
        if hour > 23 or minute > 59 or second > 59:
            raise SchemaError(where, f"is not a valid date-time, got {value!r:.60}")
        return ((day * 24 + hour) * 60 + minute) * 60_000 + second * 1000
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise SchemaError(where, f"must be an RFC 3339 timestamp with offset, got {value!r:.60}")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise SchemaError(where, f"is not a valid date-time, got {value!r:.60}") from None
    return to_ms(parsed)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Return an aware datetime as epoch milliseconds, exactly (no float rounding)."""
    return (moment - _EPOCH) // _MS


def _is_plain_utc(v: str) -> bool:
    return (
        v[19] in "Zz"
        and v[10] in "Tt "
        and v[4] == v[7] == "-"
        and v[13] == v[16] == ":"
        and (digits := v[0:4] + v[5:7] + v[8:10] + v[11:13] + v[14:16] + v[17:19]).isascii()
        and digits.isdigit()
    )


@lru_cache(maxsize=8192)
def _epoch_day(ymd: str) -> int | None:
    try:
        return date.fromisoformat(ymd).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@lru_cache(maxsize=8192)
def format_ms(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC (`2026-11-20T10:00:00Z`).

    Cached: a lead's due time and decision times are formatted again with each of its batches.
    """
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if ms % 1000:
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_text(value: object, where: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str):
        raise SchemaError(where, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise SchemaError(where, "must not be empty")
    if len(value) > max_length:
        raise SchemaError(where, f"must be at most {max_length} characters, got {len(value)}")
    if not _utf8(value):
        # JSON's "\ud800" escapes decode to lone surrogates, which no Redis key or CRM
        # field can hold: accepted, they would fail the whole batch in the worker.
        raise SchemaError(where, "must be valid Unicode text, got an unpaired surrogate escape")
    return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.isascii() or _utf8(value) else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_mend(v) for v in value]
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    return value


def mend_text(event: Event) -> Event:
    """The event with each unpaired surrogate in its data replaced by U+FFFD.

    The webhook routes refuse such text (`_check_text`), but what the worker reads from a
    CRM's REST API itself (backfill, reconciliation, fetched engagements) is not validated,
    and `requests` decodes a JSON "\ud83d" escape (an emoji cut in half) into one. Stored as it
    is, it fails the whole batch in the worker (no Redis value, index entry or keyed hash can
    hold it) on every retry, the other leads' events with it.
    """
    if all(v.isascii() if isinstance(v, str) else not isinstance(v, list | dict) for v in event.data.values()):
        return event  # (most events: nothing to look into)
    mended = _mend(dict(event.data))
    return event if mended == event.data else event._replace(data=mended)


def _finite(value: int | float) -> bool:
    # JSON integers have no size limit; one a float cannot hold would fail the worker's arithmetic.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_data_value(kind: str, value: object, where: str) -> object:
    if kind == _STR:
        return _check_text(value, where)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise SchemaError(where, f"must be true or false, got {value!r:.60}")
        return value
    if kind == _NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value < 0:
            raise SchemaError(where, f"must be a non-negative number, got {value!r:.60}")
        return value
    if kind == _POS_INT:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_POS_INT:
            raise SchemaError(where, f"must be an integer > 0 and at most {MAX_POS_INT}, got {value!r:.60}")
        return value
    if kind == _TIME:
        parse_rfc3339_ms(value, where)
        return value
    # _CHANNELS
    if not isinstance(value, list) or not value:
        raise SchemaError(where, f"must be a non-empty list of {list(CHANNELS)}, got {value!r:.60}")
    for i, channel in enumerate(value):
        if channel not in CHANNELS:
            raise SchemaError(f"{where}[{i}]", f"must be one of {list(CHANNELS)}, got {channel!r:.60}")
    return sorted(set(value))


_KEY_SET = frozenset(_EVENT_KEYS)
_REQUIRED_KEYS = frozenset(_EVENT_KEYS[:5])
_TYPE_BY_VALUE = {t.value: t for t in EventType}
_CRM_BY_VALUE = {c.value: c for c in Crm}


def _fast_text(value: object, max_length: int) -> bool:
    return type(value) is str and 0 < len(value) <= max_length and not value.isspace() and _utf8(value)


def parse_event(raw: object, where: str, now_ms: int) -> Event:
    """Validate one decoded canonical event; raise `SchemaError` naming the bad field."""
    # Field paths are formatted only on error: this runs for every event received.
    if not isinstance(raw, dict):
        raise SchemaError(where, f"must be an object, got {type(raw).__name__}")
    keys = raw.keys()
    if not keys <= _KEY_SET:
        key = next(k for k in raw if k not in _KEY_SET)
        allowed = ", ".join(_EVENT_KEYS)
        raise SchemaError(f"{where}.{key}", f"is not a field of a canonical event (allowed: {allowed})")
    if not _REQUIRED_KEYS <= keys:
        key = next(k for k in _EVENT_KEYS if k not in raw)
        raise SchemaError(f"{where}.{key}", "is required")
    event_id = raw["id"]
    if not _fast_text(event_id, MAX_ID_LENGTH):
        _check_text(event_id, f"{where}.id", MAX_ID_LENGTH)
    raw_type = raw["type"]
    etype = _TYPE_BY_VALUE.get(raw_type) if isinstance(raw_type, str) else None
    if etype is None:
        raise SchemaError(f"{where}.type", f"must be one of the canonical types, got {raw_type!r:.60}")
    raw_crm = raw["crm"]
    crm = _CRM_BY_VALUE.get(raw_crm) if isinstance(raw_crm, str) else None
    if crm is None:
        raise SchemaError(f"{where}.crm", f"must be one of {[c.value for c in Crm]}, got {raw_crm!r:.60}")
    lead_id = raw["lead_id"]
    if not _fast_text(lead_id, MAX_ID_LENGTH):
        _check_text(lead_id, f"{where}.lead_id", MAX_ID_LENGTH)
    occurred_ms = parse_rfc3339_ms(raw["occurred_at"], where + ".occurred_at")
    if occurred_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise SchemaError(f"{where}.occurred_at", f"is more than 24 hours in the future, got {raw['occurred_at']!r}")
    data_in = raw.get("data")
    spec = DATA_FIELDS[etype]
    if not data_in:
        if data_in is not None and not isinstance(data_in, dict):
            raise SchemaError(f"{where}.data", f"must be an object, got {type(data_in).__name__}")
        if _REQUIRED_DATA[etype]:
            raise SchemaError(f"{where}.data.{_REQUIRED_DATA[etype][0]}", f"is required for {etype.value}")
        plain = _version(raw["version"], f"{where}.version") if "version" in raw else {}
        return Event(event_id, etype, crm, lead_id, occurred_ms, plain)
    if not isinstance(data_in, dict):
        raise SchemaError(f"{where}.data", f"must be an object, got {type(data_in).__name__}")
    data: dict[str, Any] = {}
    for key, value in data_in.items():
        if key not in spec:
            allowed = ", ".join(spec) or "nothing"
            raise SchemaError(f"{where}.data.{key}", f"is not a field of {etype.value} (allowed: {allowed})")
        data[key] = _check_data_value(spec[key][0], value, f"{where}.data.{key}")
    for key in _REQUIRED_DATA[etype]:
        if key not in data:
            raise SchemaError(f"{where}.data.{key}", f"is required for {etype.value}")
    if "version" in raw:
        data.update(_version(raw["version"], f"{where}.version"))
    return Event(event_id, etype, crm, lead_id, occurred_ms, data)


def _version(value: object, where: str) -> dict[str, Any]:
    """Check `{"record": str, "modified_at": RFC 3339}`; return it as the reserved `data` keys."""
    if not isinstance(value, dict) or set(value) != {"record", "modified_at"}:
        raise SchemaError(where, f'must be {{"record": str, "modified_at": RFC 3339}}, got {value!r:.80}')
    record = _check_text(value["record"], f"{where}.record", MAX_ID_LENGTH)
    modified = parse_rfc3339_ms(value["modified_at"], f"{where}.modified_at")
    return versioned(record, modified)


def versioned(record: str, modified_ms: int) -> dict[str, Any]:
    """The `data` keys saying an event is the version of CRM record `record` modified at `modified_ms`.

    Of the events of one lead naming the same record, only the latest version counts
    (rules/counters.py `effective`): an activity corrected in the CRM (a call's disposition
    set to Connected, a meeting marked held then no-show) is one activity, as it is now.
    """
    digest = hashlib.blake2b(record.encode(), digest_size=6).hexdigest()
    return {RECORD_KEY: digest, VERSION_KEY: modified_ms}


def to_canonical(event: Event, record: str | None = None) -> dict[str, Any]:
    """Return the canonical JSON form of `event` (what `parse_event` reads back as the same event).

    A versioned event (`versioned`) keeps only a hash of its record's name in `data`: give that
    name as `record` so the form can say it; a name that does not match the hash is refused.
    """
    data = {k: v for k, v in event.data.items() if k not in (RECORD_KEY, VERSION_KEY)}
    raw: dict[str, Any] = {
        "id": event.id,
        "type": event.type.value,
        "crm": event.crm.value,
        "lead_id": event.lead_id,
        "occurred_at": format_ms(event.occurred_ms),
        "data": data,
    }
    if RECORD_KEY in event.data:
        if record is None or versioned(record, 0)[RECORD_KEY] != event.data[RECORD_KEY]:
            raise ValueError(f"event {event.id!r} is a version of a record: its name must be given, got {record!r}")
        raw["version"] = {"record": record, "modified_at": format_ms(int(event.data[VERSION_KEY]))}
    return raw


_REQUIRED_DATA: dict[EventType, tuple[str, ...]] = {
    t: tuple(k for k, (_, required) in spec.items() if required) for t, spec in DATA_FIELDS.items()
}


def parse_batch(body: object, now_ms: int) -> list[Event]:
    """Validate a decoded `{"events": [...]}` body; raise `SchemaError` naming the bad field."""
    if not isinstance(body, dict):
        raise SchemaError("body", f'must be a JSON object {{"events": [...]}}, got {type(body).__name__}')
    extra = [key for key in body if key != "events"]
    if extra:
        raise SchemaError(extra[0], 'is not a field of the batch (allowed: "events")')
    events = body.get("events")
    if not isinstance(events, list):
        raise SchemaError("events", f"must be a list of events, got {type(events).__name__}")
    if not events:
        raise SchemaError("events", "must hold at least one event")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise SchemaError("events", f"must hold at most {MAX_EVENTS_PER_BATCH} events, got {len(events)}")
    return [parse_event(raw, f"events[{i}]", now_ms) for i, raw in enumerate(events)]
