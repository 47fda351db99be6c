"""HubSpot Webhooks API batches -> canonical events (pure; no I/O).

What can be mapped from the webhook alone becomes canonical events at once.
What needs the HubSpot API (thin `object.creation` engagements, a deal's
associated contacts) or acts on the store rather than adding events (merges,
deletions) becomes an *operation* the worker carries out. Unknown subscription
types are counted and acknowledged: a 4xx would make HubSpot retry for 24 hours.

Property names and values differ between portals; `HubSpotMapping` holds them,
with defaults taken from HubSpot's standard properties.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict

from rules.errors import SchemaError
from rules.events import MAX_FUTURE_SKEW_MS, Crm, Event, EventType, parse_rfc3339_ms, versioned

MAX_EVENTS = 100
# Reply times outside [2000-01-01, now + MAX_FUTURE_SKEW_MS] (the bound /webhooks/events
# uses) are a sender's bug, "0" included: one far ahead would stay the lead's latest reply
# for ever and freeze its silence counters; one at 1970 counts a reply that never happened.
MIN_REPLY_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
# Epoch ms has 13 digits until the year 2286; int() of thousands of digits raises instead.
MAX_EPOCH_DIGITS = 16
REDACTED = "REDACTED"
# objectTypeId of engagement objects whose creation we fetch and map.
ENGAGEMENT_TYPES = {"0-48": "calls", "0-49": "emails", "0-47": "meetings"}
# Engagement property changes that are fetched again: a meeting's outcome, and a call's
# disposition, are often set after the record was created (and mapped as booked, or as an
# attempt).
OUTCOME_CHANGES = {("0-47", "hs_meeting_outcome"), ("0-48", "hs_call_disposition")}
# What `engagement_events` reads of each engagement record (fetched for a webhook, or by a backfill).
# hs_lastmodifieddate: which of two reads of one record is the newer version (rules/events.py `versioned`).
ENGAGEMENT_PROPERTIES: dict[str, tuple[str, ...]] = {
    "calls": ("hs_timestamp", "hs_call_direction", "hs_call_disposition", "hs_call_status", "hs_lastmodifieddate"),
    "emails": ("hs_timestamp", "hs_email_direction", "hs_lastmodifieddate"),
    "meetings": ("hs_timestamp", "hs_meeting_outcome", "hs_lastmodifieddate"),
}


@dataclass(frozen=True)
class HubSpotMapping:
    """Portal-specific names; the defaults are HubSpot's standard properties."""

    # A rep setting hs_lead_status to one of these reopens the lead (NEW and
    # ATTEMPTED_TO_CONTACT are left out: automation sets them, not a rep's decision).
    open_lead_statuses: frozenset[str] = frozenset({"OPEN", "IN_PROGRESS", "OPEN_DEAL", "CONNECTED"})
    # hs_lead_status values meaning the lead said no (`not_interested`, counted per episode by
    # `repeated_no`). HubSpot ships no such option: portals add their own, so none by default.
    # UNQUALIFIED stays out of it: Pruner sets it itself when it marks a lead lost.
    not_interested_lead_statuses: frozenset[str] = frozenset()
    lead_status_property: str = "hs_lead_status"
    optout_property: str = "hs_email_optout"
    # Properties holding the time of the lead's last reply.
    reply_properties: frozenset[str] = frozenset({"hs_sales_email_last_replied", "hs_email_last_reply_date"})
    # Contact property -> lead_profile field.
    profile_properties: dict[str, str] = field(
        default_factory=lambda: {
            "hs_analytics_source": "source",
            "industry": "segment",
            "hs_lead_priority": "priority",
            "email": "email",
        }
    )
    deal_properties: frozenset[str] = frozenset({"dealstage", "amount"})
    # The contact's lifecycle stage: one of `customer_lifecycle_stages` makes the lead WON.
    lifecycle_property: str = "lifecyclestage"
    customer_lifecycle_stages: frozenset[str] = frozenset({"customer", "evangelist"})
    # hs_call_disposition ids that mean a conversation happened (HubSpot's default "Connected").
    connected_dispositions: frozenset[str] = frozenset({"f240bbac-87c9-4f6e-bf70-924b57d47db7"})


@dataclass(frozen=True)
class Subscription:
    """One HubSpot webhook subscription the mapping below reads (Webhooks API v3 terms)."""

    event_type: str
    property_name: str | None = None
    object_type_id: str | None = None  # generic `object.*` subscriptions only


def wanted_subscriptions(mapping: HubSpotMapping) -> list[Subscription]:
    """Every subscription `parse_hubspot_batch` has a use for, with this portal's property names.

    Derived from the mapping, so that `pruner hubspot subscribe` asks HubSpot for exactly what
    the adapter understands: a property renamed in the policy is subscribed to under its new name.
    """
    wanted = [Subscription("contact.propertyChange", name) for name in contact_properties(mapping)]
    wanted += [Subscription(kind) for kind in ("contact.privacyDeletion", "contact.deletion", "contact.merge")]
    wanted += [Subscription("deal.propertyChange", name) for name in mapping.deal_properties]
    wanted += [Subscription("object.creation", None, type_id) for type_id in ENGAGEMENT_TYPES]
    wanted += [Subscription("object.propertyChange", name, type_id) for type_id, name in OUTCOME_CHANGES]
    return sorted(wanted, key=lambda s: (s.event_type, s.property_name or "", s.object_type_id or ""))


def contact_properties(mapping: HubSpotMapping) -> list[str]:
    """The contact properties the mapping reads (`contact_change`), sorted."""
    return sorted(
        {
            mapping.optout_property,
            mapping.lead_status_property,
            *mapping.reply_properties,
            *mapping.profile_properties,
            mapping.lifecycle_property,
        }
    )


class ForgetOp(TypedDict):
    """A contact deleted in HubSpot: forget the lead (worker/hubspot_ops.py, delayed for a privacyDeletion)."""

    op: Literal["forget"]
    crm: str
    lead_id: str
    at: int


class MergeOp(TypedDict):
    """Contacts merged in HubSpot: fold `merged` into `into`."""

    op: Literal["merge"]
    crm: str
    into: str
    merged: list[str]
    at: int


class DealOp(TypedDict):
    """A deal's stage or amount changed: fetch its contacts, one `deal_updated` each."""

    op: Literal["deal"]
    crm: str
    deal_id: str
    id: str
    at: int
    data: dict[str, Any]


class EngagementOp(TypedDict):
    """A call, email or meeting created or changed: fetch it and its contacts."""

    op: Literal["engagement"]
    crm: str
    object_type: str
    object_id: str
    at: int


# What a HubSpot batch asks the worker to do beyond plain events (queued in the job as JSON).
HubSpotOp = ForgetOp | MergeOp | DealOp | EngagementOp


@dataclass
class HubSpotBatch:
    events: list[Event] = field(default_factory=list)
    ops: list[HubSpotOp] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)


def _field(raw: dict[str, Any], name: str, where: str, kinds: tuple[type, ...]) -> Any:
    value = raw.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        raise SchemaError(
            f"{where}.{name}", f"is required and must be {'/'.join(k.__name__ for k in kinds)}, got {value!r:.40}"
        )
    return value


def property_change_id(object_type: str, object_id: str, name: str, at: int) -> str:
    """The id of a contact's or deal's property set to a value at `at` (epoch ms).

    The webhook path builds it from `occurredAt`, the backfill and reconciliation
    (rules/hubspot_history.py) from the version's `timestamp` in `propertiesWithHistory`: one
    change seen both ways is one event (docs/crm.md says what this rests on).
    """
    return f"hs:{object_type}:{object_id}:{name}:{at}"


# A "no" (a not-interested lead status) is counted, so it gets a second guard besides its id: it is
# a version of the record "the contact said no in this 10-minute slot" (rules/events.py
# `versioned`), of which one counts. Should a portal's `occurredAt` and version `timestamp` ever
# differ, the webhook and the read-back still count once unless a slot boundary falls between
# them; two "no"s of one contact within one slot count once too.
SAID_NO_SLOT_MS = 10 * 60_000


def said_no_record(contact_id: str, at: int) -> str:
    """The record a contact's "no" at `at` is a version of (see SAID_NO_SLOT_MS)."""
    return f"hs:contact:{contact_id}:said_no:{at // SAID_NO_SLOT_MS}"


def dedup_id(raw: dict[str, Any]) -> str:
    """HubSpot's eventId is not unique: key on (portal, subscription, event, time, object)."""
    return "hs:{}:{}:{}:{}:{}".format(
        raw.get("portalId"), raw.get("subscriptionId"), raw.get("eventId"), raw.get("occurredAt"), raw.get("objectId")
    )


def _is_id(value: object) -> bool:
    """A usable record id: a positive number (what HubSpot sends), or a short ASCII string without blanks."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 < value < 10**30
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and not any(c.isspace() for c in value)


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def parse_hubspot_batch(body: object, now_ms: int, mapping: HubSpotMapping | None = None) -> HubSpotBatch:
    """Validate a decoded HubSpot webhook body and map it; raise `SchemaError` naming the bad field."""
    m = mapping or HubSpotMapping()
    if not isinstance(body, list):
        raise SchemaError("body", f"must be a JSON array of HubSpot events, got {type(body).__name__}")
    if len(body) > MAX_EVENTS:
        raise SchemaError("body", f"must hold at most {MAX_EVENTS} events, got {len(body)}")
    out = HubSpotBatch()
    for i, raw in enumerate(body):
        where = f"[{i}]"
        if not isinstance(raw, dict):
            raise SchemaError(where, f"must be an object, got {type(raw).__name__}")
        kind = raw.get("subscriptionType") or raw.get("eventType")
        if not isinstance(kind, str) or not kind:
            raise SchemaError(f"{where}.subscriptionType", "is required")
        occurred = _field(raw, "occurredAt", where, (int,))
        if occurred > now_ms + MAX_FUTURE_SKEW_MS or occurred <= 0:
            raise SchemaError(
                f"{where}.occurredAt",
                f"must be epoch milliseconds after 1970 and at most 24 hours ahead, got {occurred}",
            )
        object_id = _field(raw, "objectId", where, (int, str))
        if not _is_id(object_id):
            raise SchemaError(f"{where}.objectId", f"must be a HubSpot record id, got {object_id!r:.40}")
        object_id = str(object_id)
        _map_one(raw, kind, object_id, occurred, now_ms, m, out)
    return out


def _event(
    raw: dict[str, Any], etype: EventType, lead: str, at: int, data: dict[str, Any] | None = None, suffix: str = ""
) -> Event:
    return Event(dedup_id(raw) + suffix, etype, Crm.HUBSPOT, lead, at, data or {})


def _map_one(
    raw: dict[str, Any], kind: str, object_id: str, at: int, now_ms: int, m: HubSpotMapping, out: HubSpotBatch
) -> None:
    if kind == "contact.propertyChange":
        name, value = raw.get("propertyName"), raw.get("propertyValue")
        if not isinstance(name, str) or value is None or value == REDACTED:
            out.ignored["contact.propertyChange:unusable"] += 1
            return
        contact_change(
            out, object_id, name, str(value), at, now_ms, m, property_change_id("contact", object_id, name, at)
        )
    elif kind == "contact.privacyDeletion":
        out.events.append(_event(raw, EventType.ERASURE_REQUESTED, object_id, at))
    elif kind == "contact.deletion":
        out.ops.append({"op": "forget", "crm": "hubspot", "lead_id": object_id, "at": at})
    elif kind == "contact.merge":
        primary = raw.get("primaryObjectId")
        survivor = raw.get("newObjectId") or primary or object_id
        ids = raw.get("mergedObjectIds") or []
        if not _is_id(survivor) or not isinstance(ids, list) or not all(_is_id(x) for x in ids):
            out.ignored["contact.merge:unusable"] += 1
            return
        if primary and str(primary) != str(survivor):
            # HubSpot made a new record (newObjectId) of the merge: the primary is folded into it
            # like the others, or its history would stay behind under an id that no longer exists.
            if not _is_id(primary):
                out.ignored["contact.merge:unusable"] += 1
                return
            ids = [primary, *ids]
        merged = list(dict.fromkeys(str(x) for x in ids if str(x) != str(survivor)))
        if merged:
            out.ops.append({"op": "merge", "crm": "hubspot", "into": str(survivor), "merged": merged, "at": at})
        else:
            out.ignored["contact.merge:empty"] += 1
    elif kind == "deal.propertyChange":
        name, value = raw.get("propertyName"), raw.get("propertyValue")
        data = deal_change(object_id, name, value, m)
        if isinstance(data, str):
            out.ignored[data] += 1
            return
        event_id = property_change_id("deal", object_id, str(name), at)
        out.ops.append({"op": "deal", "crm": "hubspot", "deal_id": object_id, "id": event_id, "at": at, "data": data})
    elif kind == "object.creation" and str(raw.get("objectTypeId")) in ENGAGEMENT_TYPES:
        object_type = ENGAGEMENT_TYPES[str(raw.get("objectTypeId"))]
        out.ops.append(
            {"op": "engagement", "crm": "hubspot", "object_type": object_type, "object_id": object_id, "at": at}
        )
    elif kind == "object.propertyChange" and (str(raw.get("objectTypeId")), raw.get("propertyName")) in OUTCOME_CHANGES:
        # A meeting is created SCHEDULED, a call often without a disposition; whether the meeting
        # was held, or the call connected, is set later.
        object_type = ENGAGEMENT_TYPES[str(raw.get("objectTypeId"))]
        out.ops.append(
            {"op": "engagement", "crm": "hubspot", "object_type": object_type, "object_id": object_id, "at": at}
        )
    else:
        out.ignored[kind] += 1


def contact_change(
    out: HubSpotBatch, contact_id: str, name: str, value: str, at: int, now_ms: int, m: HubSpotMapping, event_id: str
) -> None:
    """Map one contact property value set at `at` (a webhook's change, or a version read from the API).

    `event_id` keys the event; a reply is keyed on its own time instead, so that one reply seen
    several ways (two reply properties, the INCOMING_EMAIL engagement, a backfill) counts once.
    """

    def add(etype: EventType, data: dict[str, Any] | None = None) -> None:
        out.events.append(Event(event_id, etype, Crm.HUBSPOT, contact_id, at, data or {}))

    if name == m.optout_property:
        if _truthy(value):
            add(EventType.DO_NOT_CONTACT, {"channels": ["email"]})
        else:
            out.ignored[f"property:{name}=false"] += 1
    elif name == m.lead_status_property:
        if value.upper() in m.open_lead_statuses:
            add(EventType.REOPENED)
        elif value.upper() in m.not_interested_lead_statuses:
            add(EventType.NOT_INTERESTED, versioned(said_no_record(contact_id, at), at))
        else:
            out.ignored[f"property:{name}"] += 1
    elif name in m.reply_properties:
        reply_at = epoch_ms(value)
        if reply_at is None:
            out.ignored[f"property:{name}:unparsable"] += 1
            return
        if not MIN_REPLY_MS <= reply_at <= now_ms + MAX_FUTURE_SKEW_MS:
            out.ignored[f"property:{name}:out_of_range"] += 1
            return
        # Keyed on the reply time, not the property: the same reply seen via two properties counts once.
        out.events.append(
            Event(f"hs:reply:{contact_id}:{reply_at}", EventType.EMAIL_REPLIED, Crm.HUBSPOT, contact_id, reply_at, {})
        )
    elif name == m.lifecycle_property:
        if value.strip().lower() in m.customer_lifecycle_stages:
            add(EventType.LEAD_PROFILE, {"converted": True})
        else:
            out.ignored[f"property:{name}"] += 1  # an earlier stage: says nothing Pruner acts on
    elif name in m.profile_properties and value.strip():
        add(EventType.LEAD_PROFILE, {m.profile_properties[name]: value})
    else:
        out.ignored[f"property:{name}"] += 1


def deal_change(deal_id: str, name: object, value: object, m: HubSpotMapping) -> dict[str, Any] | str:
    """The `deal_updated` data for one deal property value, or the reason it is ignored (a counter name)."""
    if not isinstance(name, str) or name not in m.deal_properties or value in (None, REDACTED):
        return f"deal.property:{name}"
    data: dict[str, Any] = {"deal_id": deal_id}
    if name == "amount":
        try:
            amount = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer past float range
            amount = math.nan
        if not math.isfinite(amount):  # "1e999" parses as infinity
            return "deal.amount:unparsable"
        data["amount"] = max(0.0, amount)
    else:
        data["stage"] = str(value)[:200]
    return data


def deal_events(op: DealOp, contact_ids: list[str]) -> list[Event]:
    """One `deal_updated` per contact associated with the deal (ids fetched from the API)."""
    return [
        Event(f"{op['id']}:{contact}", EventType.DEAL_UPDATED, Crm.HUBSPOT, contact, int(op["at"]), dict(op["data"]))
        for contact in contact_ids
    ]


def epoch_ms(value: str) -> int | None:
    """Epoch ms from HubSpot's two spellings of a time (digits, or RFC 3339); None when neither."""
    text = value.strip()
    # isascii: str.isdigit also accepts "²", which int() refuses.
    if text.isascii() and text.isdigit():
        return int(text) if len(text) <= MAX_EPOCH_DIGITS else None
    try:
        return parse_rfc3339_ms(text, "value")
    except SchemaError:
        return None


class Versioned(NamedTuple):
    """An event and, when it is a version of a CRM record, that record's name before hashing.

    The name is what the canonical JSON form carries (`"version": {"record", "modified_at"}`),
    so that an event written out and read back is the same event.
    """

    event: Event
    record: str | None


def engagement_events(
    object_type: str, record: dict[str, Any], contact_ids: list[str], at: int, m: HubSpotMapping | None = None
) -> list[Event]:
    """Map a fetched call/email/meeting (`properties` of the CRM record) to events per associated contact."""
    return [v.event for v in engagement_versions(object_type, record, contact_ids, at, m)]


def engagement_versions(
    object_type: str, record: dict[str, Any], contact_ids: list[str], at: int, m: HubSpotMapping | None = None
) -> list[Versioned]:
    """`engagement_events`, each with the name of the record version it is (for the canonical JSON form)."""
    m = m or HubSpotMapping()
    props = record.get("properties") or {}
    when = epoch_ms(str(props.get("hs_timestamp") or "")) or at
    etype: EventType | None = None
    data: dict[str, Any] = {}
    if object_type == "calls":
        if str(props.get("hs_call_direction", "OUTBOUND")).upper() == "INBOUND":
            etype = EventType.CALL_CONNECTED  # the lead called us: a conversation
        elif props.get("hs_call_disposition") in m.connected_dispositions:
            etype = EventType.CALL_CONNECTED
        else:
            etype = EventType.CALL_ATTEMPTED
    elif object_type == "emails":
        direction = str(props.get("hs_email_direction", "")).upper()
        etype = {"EMAIL": EventType.EMAIL_SENT, "INCOMING_EMAIL": EventType.EMAIL_REPLIED}.get(direction)
    elif object_type == "meetings":
        outcome = str(props.get("hs_meeting_outcome", "SCHEDULED")).upper()
        etype = {
            "SCHEDULED": EventType.MEETING_BOOKED,
            "COMPLETED": EventType.MEETING_HELD,
            "NO_SHOW": EventType.MEETING_NO_SHOW,
            "RESCHEDULED": EventType.MEETING_RESCHEDULED,
        }.get(outcome)
        data = {"meeting_id": str(record.get("id", ""))[:200]} if record.get("id") else {}
    if etype is None:
        return []
    if etype is EventType.EMAIL_REPLIED:
        # Keyed like the `hs_sales_email_last_replied` property change: one reply seen both
        # ways (the property and the INCOMING_EMAIL engagement, same time) counts once.
        return [
            Versioned(Event(f"hs:reply:{contact}:{when}", etype, Crm.HUBSPOT, contact, when, data), None)
            for contact in contact_ids
        ]
    # A meeting is one record with several outcomes over time (booked, then held or a
    # no-show), a call too (logged, then its disposition set to Connected): each outcome is
    # its own event. The first one (booked, attempted) keeps the plain key.
    first = {"meetings": EventType.MEETING_BOOKED, "calls": EventType.CALL_ATTEMPTED}.get(object_type)
    suffix = f":{etype.value}" if first is not None and etype is not first else ""
    # What a correction replaces: a call's classification (attempted or connected), a meeting's
    # outcome (held or no-show; booking it and rescheduling it are events of their own). The
    # latest modification of the record counts, once. (Replies are keyed apart, above.)
    modified = epoch_ms(str(props.get("hs_lastmodifieddate") or "")) or at
    part = "call" if object_type == "calls" else None
    if object_type == "meetings" and etype in (EventType.MEETING_HELD, EventType.MEETING_NO_SHOW):
        part = "outcome"
    out = []
    for contact in contact_ids:
        name = f"hs:{object_type}:{record.get('id')}:{contact}:{part}" if part else None
        version = versioned(name, modified) if name else {}
        event_id = f"hs:{object_type}:{record.get('id')}:{contact}{suffix}"
        out.append(Versioned(Event(event_id, etype, Crm.HUBSPOT, contact, when, {**data, **version}), name))
    return out
