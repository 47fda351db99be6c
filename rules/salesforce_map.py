"""Salesforce Outbound Message notifications -> canonical events: pure functions, no I/O.

The inbound view (webhooks/salesforce.py) parses the SOAP envelope into `Notification`s;
`map_notifications` turns them into canonical `Event`s with `crm = salesforce`. Every
field name and picklist value used here is a `SalesforceMapping` attribute, because
Salesforce orgs rename picklists and add their own fields.

What each sObject becomes (defaults):

- `Lead`: `HasOptedOutOfEmail` true -> `do_not_contact` [email]; `DoNotCall` true ->
  `do_not_contact` [phone] (both -> one event with both channels); `Status` in
  `not_interested_statuses` ("Closed - Not Interested") -> `not_interested`; `Status` in
  `open_statuses` AND the marker `Pruner_Reopened__c` set -> `reopened` (an outbound message
  carries only the latest values, so "it was closed before" cannot be seen: a flow or
  process that reopens a lead must set the marker, to `true` or, better, to the time of
  the reopen); `LeadSource`/`Industry`/`Rating`/`Email` -> `lead_profile`
  (source/segment/priority/email); `IsConverted` true -> `lead_profile` `converted` (WON).
- `Task` whose `WhoId` is a lead (`00Q…`), skipped while `IsClosed` is false (a planned
  task is not an activity yet): `TaskSubtype` Call -> `call_connected` when
  `CallDisposition` is a conversation ("Connected", "Spoke", "Meeting booked", …) or
  `CallDurationInSeconds` > 60, else `call_attempted`; a disposition in
  `not_interested_dispositions` ("Not interested") -> `call_connected` + `not_interested`.
  `CallType` Inbound (the lead called us) is always `call_connected`, never an attempt;
  `CallType` Internal (colleagues, not the lead) is skipped and counted as `call_internal`.
  `TaskSubtype` Email/ListEmail -> `email_sent`, or `email_replied` when the marker
  `Pruner_Inbound__c` is true or, absent the marker, the `Subject` starts with "RE:".
- `Event` whose `WhoId` is a lead -> `meeting_booked`; `meeting_held` once `EndDateTime`
  is past (unless `Pruner_Cancelled__c` or `Pruner_No_Show__c`); `meeting_no_show` when
  `Pruner_No_Show__c`; `meeting_rescheduled` when `Pruner_Rescheduled__c` is true
  (`first_meeting` from `Pruner_First_Meeting__c` when sent). `meeting_id` = the Event Id.
- `Opportunity` -> `deal_updated` (`deal_id`, `amount`, `stage`, and `won` from `IsWon`
  when the message carries it); the lead comes from
  `Pruner_Lead_Id__c` (a converted lead's Opportunity has no lead link of its own).
- `Individual` -> `erasure_requested` when `ShouldForget`, `do_not_contact` [all] when
  `HasOptedOutSolicit`; the lead comes from `Pruner_Lead_Id__c` (Individuals link to
  leads only through `Lead.IndividualId`).
- Anything else is skipped and counted, never refused: Salesforce would retry it for 24 h.

Event ids (the store's dedup key). Salesforce re-sends a notification with the same
`Id`, and sends a new notification on every edit that matches the rule, always with the
record's latest values. So:

- activities are keyed by their record: a Task or Event is one call, email or meeting,
  however often it is edited or re-sent (`sf:{TaskId}:call_connected`,
  `sf:{EventId}:meeting_booked`, `sf:{EventId}:meeting_rescheduled:{StartDateTime}`);
- states are keyed by record and value (`sf:{LeadId}:do_not_contact:email`,
  `sf:{IndividualId}:erasure_requested`): repeating a fact does not repeat the event;
- occurrences on a Lead or Opportunity are keyed by the record and the version it was
  read at, its `LastModifiedDate` (else `SystemModstamp`) in epoch ms
  (`sf:{LeadId}:not_interested:{ms}`, `sf:{LeadId}:reopened:{ms}` when the marker is a plain
  `true`, `sf:{LeadId}:lead_profile:{ms}`, `sf:{OpportunityId}:deal_updated:{ms}`, and
  `sf:{EventId}:meeting_rescheduled:{ms}` when the Event has no start time): a re-sent
  notification carries the same version, and a backfill reading the record by SOQL
  (rules/salesforce_history.py) finds the same one, so all three give one id. The outbound
  rule for them should fire on the change ("created, and any time it's edited to
  subsequently meet criteria"), not on every edit, and should send `LastModifiedDate`: a
  message without either time falls back to the notification id (`sf:{NotificationId}:…`,
  the ids used before versions were), which no backfill can rebuild.

One function per sObject maps a record's field values (as text, the way a SOAP message
carries them), whoever read it: `map_notifications` for outbound messages, `map_records`
for records read through the REST API. `record_fields` names the fields each one reads.

Times: the record's own timestamps (`CompletedDateTime`, `CreatedDate`, `ActivityDate`,
`EndDateTime`, `LastModifiedDate`, per kind) when present, parseable and inside Salesforce's
dateTime range (1700-01-01 to 4000-12-31 UTC), else the receive time; never later than the
receive time (nothing has happened in the future).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rules.errors import SchemaError
from rules.events import Event, EventType, format_ms, parse_event, parse_rfc3339_ms, to_ms
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_ids import is_record_id, to_18

LEAD_PREFIX = "00Q"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SOBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
# A record version's time: LastModifiedDate first, as it moves only on an edit, while
# SystemModstamp also moves on system updates (a recalculation) that change none of the
# fields mapped here, which would make a later read of the same values look like a new version.
VERSION_FIELDS = ("LastModifiedDate", "SystemModstamp")
# Salesforce's own dateTime range. A value outside it is no real record time, and one
# before year 1 in UTC (`0001-01-01T00:00:00+01:00`) cannot even be formatted.
_EARLIEST_MS = to_ms(datetime(1700, 1, 1, tzinfo=UTC))
_LATEST_MS = to_ms(datetime(4000, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC))


@dataclass(frozen=True)
class Notification:
    """One `<Notification>` of an outbound message: its id, sObject type and field values."""

    id: str
    sobject: str
    fields: Mapping[str, str | None]


@dataclass
class MapResult:
    """The events one message yields, and what was skipped, counted by reason."""

    events: list[Event] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    # Event id -> the record a versioned event is a version of (what its canonical JSON names).
    versions: dict[str, str] = field(default_factory=dict)


def _true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"true", "1"}


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _time_ms(value: str | None) -> int | None:
    """Parse a Salesforce dateTime (`2026-11-20T10:00:00.000Z`) or date (`2026-11-20`)."""
    value = _text(value)
    if value is None:
        return None
    if _DATE.fullmatch(value):
        value += "T00:00:00Z"
    elif len(value) >= 5 and value[-5] in "+-" and value[-3] != ":":
        value = value[:-2] + ":" + value[-2:]  # `+0000` -> `+00:00`
    try:
        at = parse_rfc3339_ms(value, "time")
    except SchemaError:
        return None
    return at if _EARLIEST_MS <= at <= _LATEST_MS else None


def record_time_ms(value: str | None) -> int | None:
    """Epoch ms of a Salesforce dateTime or date as the API writes it; None when absent or not a real time."""
    return _time_ms(value)


def _lead_id(value: str | None) -> str | None:
    value = _text(value)
    if value is None or not is_record_id(value) or not value.startswith(LEAD_PREFIX):
        return None
    return to_18(value)


class _Builder:
    """Collects canonical events for one message, validating each like `/webhooks/events` does."""

    def __init__(self, now_ms: int, result: MapResult) -> None:
        self.now_ms = now_ms
        self.result = result

    def first_time(self, values: Mapping[str, str | None], names: Iterable[str]) -> int:
        for name in names:
            at = _time_ms(values.get(name))
            if at is not None:
                return min(at, self.now_ms)
        return self.now_ms

    def add_keyed(
        self, event_id: str | None, etype: EventType, lead_id: str, at_ms: int, data: dict[str, Any] | None = None
    ) -> None:
        """`add`, or count the event as skipped when the record gave nothing to key it on."""
        if event_id is None:
            self.result.skipped["no_version_to_key_on"] += 1
        else:
            self.add(event_id, etype, lead_id, at_ms, data)

    def add(
        self,
        event_id: str,
        etype: EventType,
        lead_id: str,
        at_ms: int,
        data: dict[str, Any] | None = None,
        version_of: str | None = None,
        modified_ms: int | None = None,
    ) -> None:
        """Add one event; `version_of` names the record part a later edit corrects (see rules/events.py)."""
        try:
            raw: dict[str, Any] = {
                "id": event_id,
                "type": etype.value,
                "crm": "salesforce",
                "lead_id": lead_id,
                "occurred_at": format_ms(at_ms),
                "data": data or {},
            }
            if version_of is not None:
                modified = at_ms if modified_ms is None else modified_ms
                raw["version"] = {"record": version_of, "modified_at": format_ms(modified)}
            self.result.events.append(parse_event(raw, event_id, self.now_ms))
            if version_of is not None:
                self.result.versions[event_id] = version_of
        except (SchemaError, ValueError, OverflowError, OSError):
            # A value Salesforce allows but the canonical schema does not (e.g. a negative
            # amount), or a time `format_ms` cannot write (`_time_ms` keeps those out; this is
            # the second fence, and `datetime.fromtimestamp` raises any of the last three):
            # drop that one event, keep the rest, never make Salesforce retry.
            self.result.skipped["invalid_value"] += 1


def _modified_ms(f: Mapping[str, str | None]) -> int | None:
    """The record version's time, the same whoever read the record (not clamped to the receive time)."""
    for name in VERSION_FIELDS:
        at = _time_ms(f.get(name))
        if at is not None:
            return at
    return None


def _occurrence_id(record: str | None, kind: str, f: Mapping[str, str | None], delivery: str | None) -> str | None:
    """`sf:{record}:{kind}:{version ms}`; without a version, the notification's own id as before (or None)."""
    modified = _modified_ms(f)
    if record is not None and modified is not None:
        return f"sf:{record}:{kind}:{modified}"
    return f"sf:{delivery}:{kind}" if delivery is not None else None


def _map_lead(f: Mapping[str, str | None], delivery: str | None, m: SalesforceMapping, b: _Builder) -> None:
    lead = _lead_id(f.get("Id"))
    if lead is None:
        b.result.skipped["lead_without_id"] += 1
        return
    at = b.first_time(f, ("LastModifiedDate", "CreatedDate"))
    channels = [c for c, name in (("email", "HasOptedOutOfEmail"), ("phone", "DoNotCall")) if _true(f.get(name))]
    if channels:
        b.add(
            f"sf:{lead}:do_not_contact:{'+'.join(channels)}", EventType.DO_NOT_CONTACT, lead, at, {"channels": channels}
        )
    status = _text(f.get("Status"))
    if status in m.not_interested_statuses:
        b.add_keyed(_occurrence_id(lead, "not_interested", f, delivery), EventType.NOT_INTERESTED, lead, at)
    marker = _text(f.get(m.reopened_field))
    if status in m.open_statuses and marker is not None:
        reopened_at = _time_ms(marker)
        if reopened_at is not None:
            # A reopen time identifies the reopen itself: re-sent or later edits don't repeat it.
            b.add(f"sf:{lead}:reopened:{reopened_at}", EventType.REOPENED, lead, min(reopened_at, b.now_ms))
        elif _true(marker):
            b.add_keyed(_occurrence_id(lead, "reopened", f, delivery), EventType.REOPENED, lead, at)
    profile: dict[str, Any] = {
        key: value for key, name in m.profile_fields.items() if (value := _text(f.get(name))) is not None
    }
    if _true(f.get("IsConverted")):
        profile["converted"] = True  # the lead became a contact/account: a customer (WON)
    if profile:
        b.add_keyed(_occurrence_id(lead, "lead_profile", f, delivery), EventType.LEAD_PROFILE, lead, at, profile)


def _map_task(f: Mapping[str, str | None], delivery: str | None, m: SalesforceMapping, b: _Builder) -> None:
    task_id, lead = _text(f.get("Id")) or delivery, _lead_id(f.get("WhoId"))
    if lead is None or task_id is None:
        b.result.skipped["task_not_on_a_lead" if lead is None else "task_without_id"] += 1
        return
    if _text(f.get("IsClosed")) is not None and not _true(f.get("IsClosed")):
        b.result.skipped["task_not_done"] += 1
        return
    subtype = _text(f.get("TaskSubtype"))
    at = b.first_time(f, ("CompletedDateTime", "CreatedDate", "ActivityDate", "LastModifiedDate"))
    # An edited Task (a disposition set later, the inbound flag ticked) is one activity: the
    # version with the latest modification counts (rules/events.py `versioned`).
    modified = b.first_time(f, ("SystemModstamp", "LastModifiedDate", "CompletedDateTime", "CreatedDate"))
    record = f"sf:task:{task_id}"
    if subtype in m.call_subtypes:
        _map_call(task_id, lead, at, f, m, b, (record, modified))
    elif subtype in m.email_subtypes:
        inbound = f.get(m.inbound_email_field)
        if inbound is not None and _text(inbound) is not None:
            replied = _true(inbound)
        else:
            subject = (_text(f.get("Subject")) or "").lower()
            replied = any(subject.startswith(prefix) for prefix in m.reply_subject_prefixes)
        etype = EventType.EMAIL_REPLIED if replied else EventType.EMAIL_SENT
        b.add(f"sf:{task_id}:{etype.value}", etype, lead, at, None, record, modified)
    else:
        b.result.skipped["task_subtype_unmapped"] += 1


def _map_call(
    task_id: str,
    lead: str,
    at: int,
    f: Mapping[str, str | None],
    m: SalesforceMapping,
    b: _Builder,
    version: tuple[str, int],
) -> None:
    direction = (_text(f.get(m.call_type_field)) or "").lower()
    if direction in m.internal_call_types:
        # A call between colleagues logged on the lead is no contact with the lead.
        b.result.skipped["call_internal"] += 1
        return
    disposition = (_text(f.get("CallDisposition")) or "").lower()
    try:
        seconds = int(float(_text(f.get("CallDurationInSeconds")) or "0"))
    except (ValueError, OverflowError):  # not a number, NaN, or "1e999" (infinity)
        seconds = 0
    said_no = disposition in m.not_interested_dispositions
    # The lead calling us is a conversation the lead started, whatever the disposition:
    # counting it as an unanswered outbound touch would push a lead who reached out
    # towards unresponsive.
    connected = (
        said_no
        or direction in m.inbound_call_types
        or disposition in m.connected_dispositions
        or seconds > m.connected_min_seconds
    )
    if connected:
        b.add(f"sf:{task_id}:call_connected", EventType.CALL_CONNECTED, lead, at, None, *version)
    else:
        b.add(f"sf:{task_id}:call_attempted", EventType.CALL_ATTEMPTED, lead, at, None, *version)
    if said_no:
        b.add(f"sf:{task_id}:not_interested", EventType.NOT_INTERESTED, lead, at)


def _map_event(f: Mapping[str, str | None], delivery: str | None, m: SalesforceMapping, b: _Builder) -> None:
    meeting, lead = _text(f.get("Id")) or delivery, _lead_id(f.get("WhoId"))
    if lead is None or meeting is None:
        b.result.skipped["event_not_on_a_lead" if lead is None else "event_without_id"] += 1
        return
    data = {"meeting_id": meeting}
    b.add(f"sf:{meeting}:meeting_booked", EventType.MEETING_BOOKED, lead, b.first_time(f, ("CreatedDate",)), data)
    if _true(f.get(m.rescheduled_field)):
        moved: dict[str, Any] = dict(data)
        if _text(f.get(m.first_meeting_field)) is not None:
            moved["first_meeting"] = _true(f.get(m.first_meeting_field))
        # One reschedule per new start time: unrelated edits keep the same start.
        start = _time_ms(f.get("StartDateTime"))
        # Without a start time, the version of the record (or, lacking that, the notification) says which move.
        which = start if start is not None else _modified_ms(f)
        key = f"sf:{meeting}:meeting_rescheduled:{which if which is not None else delivery}"
        b.add(key, EventType.MEETING_RESCHEDULED, lead, b.first_time(f, ("LastModifiedDate",)), moved)
    end = _time_ms(f.get("EndDateTime"))
    if end is None or end > b.now_ms or _true(f.get(m.cancelled_field)):
        return
    # Held, then marked a no-show (or the other way): one outcome, the latest edit's.
    outcome = (f"sf:event:{meeting}:outcome", b.first_time(f, ("SystemModstamp", "LastModifiedDate", "CreatedDate")))
    if _true(f.get(m.no_show_field)):
        b.add(f"sf:{meeting}:meeting_no_show", EventType.MEETING_NO_SHOW, lead, end, data, *outcome)
    else:
        b.add(f"sf:{meeting}:meeting_held", EventType.MEETING_HELD, lead, end, data, *outcome)


def _map_opportunity(f: Mapping[str, str | None], delivery: str | None, m: SalesforceMapping, b: _Builder) -> None:
    lead = _lead_id(f.get(m.opportunity_lead_field))
    if lead is None:
        b.result.skipped["opportunity_without_lead"] += 1
        return
    data: dict[str, Any] = {}
    if (deal := _text(f.get("Id"))) is not None:
        data["deal_id"] = deal
    if (stage := _text(f.get("StageName"))) is not None:
        data["stage"] = stage
    if _text(f.get("IsWon")) is not None:
        # Salesforce's own verdict, whatever the org named its stages (rules read it over the stage).
        data["won"] = _true(f.get("IsWon"))
    amount = _text(f.get("Amount"))
    if amount is not None:
        try:
            data["amount"] = float(amount)
        except ValueError:
            b.result.skipped["invalid_value"] += 1
    at = b.first_time(f, ("LastModifiedDate", "CreatedDate"))
    b.add_keyed(_occurrence_id(deal, "deal_updated", f, delivery), EventType.DEAL_UPDATED, lead, at, data)


def _map_individual(f: Mapping[str, str | None], delivery: str | None, m: SalesforceMapping, b: _Builder) -> None:
    lead = _lead_id(f.get(m.individual_lead_field))
    record = _text(f.get("Id")) or delivery
    if lead is None or record is None:
        b.result.skipped["individual_without_lead" if lead is None else "individual_without_id"] += 1
        return
    at = b.first_time(f, ("LastModifiedDate", "CreatedDate"))
    if _true(f.get("ShouldForget")):
        b.add(f"sf:{record}:{lead}:erasure_requested", EventType.ERASURE_REQUESTED, lead, at)
    if _true(f.get("HasOptedOutSolicit")):
        channels = ["all"]
        b.add(f"sf:{record}:{lead}:do_not_contact:all", EventType.DO_NOT_CONTACT, lead, at, {"channels": channels})


_MAPPERS: dict[str, Callable[[Mapping[str, str | None], str | None, SalesforceMapping, _Builder], None]] = {
    "Lead": _map_lead,
    "Task": _map_task,
    "Event": _map_event,
    "Opportunity": _map_opportunity,
    "Individual": _map_individual,
}
SOBJECTS = tuple(_MAPPERS)


def record_fields(sobject: str, m: SalesforceMapping) -> tuple[str, ...]:
    """The fields the mapping of `sobject` reads, with the mapping's names: what a SOQL read must select."""
    common = ("Id", "CreatedDate", *VERSION_FIELDS)
    by_type: dict[str, tuple[str, ...]] = {
        "Lead": ("HasOptedOutOfEmail", "DoNotCall", "Status", m.reopened_field, *m.profile_fields.values(),
                 "IsConverted"),
        "Task": ("WhoId", "IsClosed", "TaskSubtype", "CompletedDateTime", "ActivityDate", m.inbound_email_field,
                 "Subject", m.call_type_field, "CallDisposition", "CallDurationInSeconds"),
        "Event": ("WhoId", m.rescheduled_field, m.first_meeting_field, "StartDateTime", "EndDateTime",
                  m.cancelled_field, m.no_show_field),
        "Opportunity": (m.opportunity_lead_field, "StageName", "IsWon", "Amount"),
        "Individual": (m.individual_lead_field, "ShouldForget", "HasOptedOutSolicit"),
    }  # fmt: skip
    return tuple(dict.fromkeys((*common, *by_type[sobject])))


def map_records(
    records: Iterable[tuple[str, Mapping[str, str | None], str | None]],
    now_ms: int,
    mapping: SalesforceMapping | None = None,
) -> MapResult:
    """Map (sObject type, field values as text, notification id or None) to canonical events; count the skipped."""
    mapping = mapping or SalesforceMapping()
    result = MapResult()
    builder = _Builder(now_ms, result)
    for sobject, values, delivery in records:
        mapper = _MAPPERS.get(sobject)
        if mapper is None:
            # The type comes from the sender's xsi:type and ends up in a log line: an sObject
            # API name is kept, anything else (an email address, say) is not repeated.
            name = sobject if _SOBJECT_NAME.fullmatch(sobject) else "invalid"
            result.skipped[f"unknown_sobject:{name}"] += 1
            continue
        before = len(result.events) + sum(result.skipped.values())
        mapper(values, delivery, mapping, builder)
        if len(result.events) + sum(result.skipped.values()) == before:
            result.skipped["nothing_to_map"] += 1
    return result


def map_notifications(
    notifications: Iterable[Notification], now_ms: int, mapping: SalesforceMapping | None = None
) -> MapResult:
    """Map one outbound message's notifications to canonical events; count what is skipped."""
    return map_records(((n.sobject, n.fields, n.id) for n in notifications), now_ms, mapping)
