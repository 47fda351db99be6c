"""Per-lead engagement counters, folded from a lead's event history.

Counters are never incremented in place in storage: they are a pure function of
the *set* of events a lead has seen. `fold` sorts that set by (event time, type,
event key) before applying it, so the same events in any delivery order, with any
duplicates removed upstream, give the same counters — including order-dependent
ones such as "follow-ups since the last reply".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from rules.calendar import week_index
from rules.events import RECORD_KEY, TYPE_CODES, VERSION_KEY, EventType, parse_rfc3339_ms

# Outbound touches: what the rep (or a sequence) did to reach the lead.
TOUCHES = frozenset({EventType.EMAIL_SENT, EventType.CALL_ATTEMPTED, EventType.CALL_CONNECTED})
# Signs of life from the lead, or a rep's manual reopen: each resets silence (docs/lifecycle.md guardrail 6).
RESPONSES = frozenset(
    {
        EventType.EMAIL_REPLIED,
        EventType.CALL_CONNECTED,
        EventType.MEETING_BOOKED,
        EventType.MEETING_HELD,
        EventType.REOPENED,
    }
)


class LoggedEvent(NamedTuple):
    """An event as kept in a lead's history: `key` is its short dedup hash."""

    occurred_ms: int
    type: EventType
    key: bytes
    data: Mapping[str, Any]

    def sort_key(self) -> tuple[int, int, bytes]:
        return (self.occurred_ms, TYPE_CODES[self.type], self.key)


def is_follow_up(etype: EventType, data: Mapping[str, Any], first_touch: bool) -> bool:
    """Whether a touch follows up: the one rule the counters and the lifecycle's silence both read.

    A sequence may say so of an email (`follow_up`); otherwise every outbound email or
    unanswered call after the very first touch is a follow-up. A connected call is not.
    """
    if etype is EventType.EMAIL_SENT:
        return bool(data.get("follow_up", not first_touch))
    return etype is EventType.CALL_ATTEMPTED and not first_touch


# `LeadCounters.call_attempts_by_week` keeps the latest weeks with calls only.
CALL_WEEKS_KEPT = 13
# (source, deal stage, segment, priority), see `LeadCounters.profile`.
Profile = tuple[str | None, str | None, str | None, str | None]


class LeadCounters(msgspec.Struct, array_like=True):
    """Everything docs/lifecycle.md asks to count for one lead.

    A msgspec struct rather than a dataclass: a checkpoint (rules/lifecycle.py) carries
    the counters, and an array-like struct encodes them in ~60 bytes, with no field names.
    A new counter goes at the end, with a default; its checkpoints then differ in shape
    and are replayed from the log once (see `rules.running.CHECKPOINT_SCHEMA`).
    """

    outbound_touches: int = 0
    follow_ups_since_reply: int = 0
    replies: int = 0
    not_interested: int = 0
    follow_up_reschedules: int = 0
    call_attempts: int = 0
    minutes_invested: int = 0
    connected_calls: int = 0
    emails_sent: int = 0
    bounces: int = 0
    hard_bounces: int = 0
    meetings_booked: int = 0
    meetings_held: int = 0
    meetings_rescheduled: int = 0
    no_shows: int = 0
    decision_no: int = 0
    decision_no_reason: str | None = None
    not_interested_reason: str | None = None
    first_touch_ms: int | None = None
    last_touch_ms: int | None = None
    last_reply_ms: int | None = None
    last_event_ms: int | None = None
    # Calendar week (rules/calendar.py `week_index`, as the cadence rule counts) -> call attempts,
    # for the latest CALL_WEEKS_KEPT weeks with calls.
    call_attempts_by_week: dict[int, int] = msgspec.field(default_factory=dict)
    proposal_sent_ms: int | None = None
    proposal_expires_ms: int | None = None
    deal_amount: float | None = None
    deal_stage: str | None = None
    deal_ids: set[str] = msgspec.field(default_factory=set)
    source: str | None = None
    segment: str | None = None
    priority: str | None = None
    do_not_contact: set[str] = msgspec.field(default_factory=set)
    erasure_requested: bool = False
    consent_ms: int | None = None

    def profile(self) -> Profile:
        """(source, deal stage, segment, priority): what the list index shows of the lead's CRM record."""
        return (self.source, self.deal_stage, self.segment, self.priority)

    def apply(self, event: LoggedEvent) -> None:
        """Fold one event in; callers feed events in `LoggedEvent.sort_key` order."""
        etype, at, data = event.type, event.occurred_ms, event.data
        if etype is EventType.BREAKUP_TASK_CREATED:
            return  # Pruner's own record of a CRM task, not something the lead did
        self.last_event_ms = at
        if etype in TOUCHES:
            first = self.first_touch_ms is None
            self.outbound_touches += 1
            if first:
                self.first_touch_ms = at
            self.last_touch_ms = at
            self.follow_ups_since_reply += is_follow_up(etype, data, first)
            if etype is EventType.EMAIL_SENT:
                self.emails_sent += 1
            elif etype is EventType.CALL_ATTEMPTED:
                self.call_attempts += 1
                week = week_index(at)
                by_week = self.call_attempts_by_week
                by_week[week] = by_week.get(week, 0) + 1
                if len(by_week) > CALL_WEEKS_KEPT:
                    # A quarter of weeks is what anyone reads; a lead called for years would
                    # otherwise carry every week in its checkpoint. Events come in time order.
                    for old in sorted(by_week)[:-CALL_WEEKS_KEPT]:
                        del by_week[old]
            else:
                self.connected_calls += 1
        if etype in RESPONSES:
            self.follow_ups_since_reply = 0
            self.last_reply_ms = at
            if etype is EventType.EMAIL_REPLIED:
                self.replies += 1
            elif etype is EventType.MEETING_BOOKED:
                self.meetings_booked += 1
            elif etype is EventType.MEETING_HELD:
                self.meetings_held += 1
            return
        if etype is EventType.EMAIL_BOUNCED:
            self.bounces += 1
            self.hard_bounces += bool(data.get("hard", False))
        elif etype is EventType.MEETING_NO_SHOW:
            self.no_shows += 1
        elif etype is EventType.MEETING_RESCHEDULED:
            self.meetings_rescheduled += 1
            # docs/lifecycle.md `pushed_back`: rescheduling a first meeting is normal life.
            if not data.get("first_meeting", False):
                self.follow_up_reschedules += 1
        elif etype is EventType.NOT_INTERESTED:
            self.not_interested += 1
            self.not_interested_reason = data.get("reason", self.not_interested_reason)
        elif etype is EventType.DECISION_NO:
            self.decision_no += 1
            self.decision_no_reason = data["reason"]
        elif etype is EventType.PROPOSAL_SENT:
            self.proposal_sent_ms = at
            self.proposal_expires_ms = _expiry_ms(data)
        elif etype is EventType.TIME_LOGGED:
            self.minutes_invested += int(data["minutes"])
        elif etype is EventType.DEAL_UPDATED:
            if "deal_id" in data:
                self.deal_ids.add(data["deal_id"])
            if "amount" in data:
                self.deal_amount = float(data["amount"])
            if "stage" in data:
                self.deal_stage = data["stage"]
        elif etype is EventType.LEAD_PROFILE:
            self.source = data.get("source", self.source)
            self.segment = data.get("segment", self.segment)
            self.priority = data.get("priority", self.priority)
        elif etype is EventType.DO_NOT_CONTACT:
            self.do_not_contact.update(data.get("channels", ["all"]))
        elif etype is EventType.ERASURE_REQUESTED:
            self.erasure_requested = True
        elif etype is EventType.CONSENT_GIVEN:
            self.consent_ms = at
            self.do_not_contact.clear()

    def public(self) -> dict[str, int]:
        """Return the counters docs/http.md names, for `/leads` and `pruner explain`."""
        return {
            "outbound_touches": self.outbound_touches,
            "follow_ups_since_reply": self.follow_ups_since_reply,
            "replies": self.replies,
            "not_interested": self.not_interested,
            "follow_up_reschedules": self.follow_up_reschedules,
            "call_attempts": self.call_attempts,
            "minutes_invested": self.minutes_invested,
            "connected_calls": self.connected_calls,
            "emails_sent": self.emails_sent,
            "bounces": self.bounces,
            "meetings_booked": self.meetings_booked,
            "meetings_held": self.meetings_held,
            "meetings_rescheduled": self.meetings_rescheduled,
            "no_shows": self.no_shows,
            "decision_no": self.decision_no,
        }


def _expiry_ms(data: Mapping[str, Any]) -> int | None:
    value = data.get("expires_at")
    return None if value is None else parse_rfc3339_ms(value, "data.expires_at")


def sort_events(events: Iterable[LoggedEvent]) -> list[LoggedEvent]:
    """Return the events that count, in the one canonical order every fold uses."""
    return sorted(effective(events), key=LoggedEvent.sort_key)


def effective(events: Iterable[LoggedEvent]) -> list[LoggedEvent]:
    """Drop the superseded versions of CRM records: of the events naming one record, the latest counts.

    Latest by the record's modification time (`~v`), then by event key, never by arrival:
    a stale version delivered last does not win, so any order gives the same set.
    """
    plain: list[LoggedEvent] = []
    latest: dict[str, LoggedEvent] = {}
    for ev in events:
        record = ev.data.get(RECORD_KEY) if ev.data else None
        if record is None:
            plain.append(ev)
            continue
        held = latest.get(record)
        if held is None or (ev.data[VERSION_KEY], ev.key) > (held.data[VERSION_KEY], held.key):
            latest[record] = ev
    return plain + list(latest.values()) if latest else plain


def fold(events: Iterable[LoggedEvent], start: LeadCounters | None = None) -> LeadCounters:
    """Compute a lead's counters from its (deduplicated) event set, in any order.

    `start`: the counters of the events before these (a log's fold), moved on in place.
    """
    counters = start if start is not None else LeadCounters()
    for event in sort_events(events):
        counters.apply(event)
    return counters
