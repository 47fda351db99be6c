"""HubSpot records read from the CRM API -> canonical events, for a backfill (pure; no I/O).

A backfill reads what webhooks would have said: each contact's and deal's property history
(`propertiesWithHistory`), and every call, email and meeting with its contacts. Each value
goes through the webhook mapping (rules/hubspot_map.py: `contact_change`, `deal_change` and
`deal_events`, `engagement_versions`), so it means what the webhook would have meant.

Event ids are the webhook path's, so a record read here and the webhook for the same change
count once, in either order:
- engagements: `hs:calls:<call>:<contact>`, versioned by the record's last modification;
- replies are keyed on the reply time, as the webhook keys them;
- contact and deal property versions: (record, property, time of the version),
  `hs:contact:<id>:<property>:<ms>` (`property_change_id`), which the webhook path builds from
  the notification's `occurredAt` (docs/crm.md: what that rests on). A second backfill, or a
  reconciliation reading the same version, finds the same ids and adds nothing.

Which versions: every change in [since, until), and for a backfill (`prior`) also the value in
force at `since` (what the lead was when the window opens). Reconciliation leaves that one out:
it was a change of an earlier window, not something a webhook missed lately.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rules.events import Event, EventType
from rules.hubspot_map import (
    DealOp,
    HubSpotBatch,
    HubSpotMapping,
    Versioned,
    contact_change,
    contact_properties,
    deal_change,
    deal_events,
    engagement_versions,
    epoch_ms,
    property_change_id,
    said_no_record,
)

OWNER_PROPERTY = "hubspot_owner_id"  # read for the dry run's count per owner; no event carries it


@dataclass
class Mapped:
    """What records mapped to: events (with the version names the JSON form needs) and what was ignored."""

    events: list[Versioned] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)

    def add(self, events: Iterable[Event]) -> None:
        self.events.extend(Versioned(e, None) for e in events)


def versions(
    record: Mapping[str, Any], name: str, since_ms: int, until_ms: int, prior: bool = True
) -> list[tuple[str, int]]:
    """(value, epoch ms) of `name`: the value in force at `since_ms` (`prior`), then each change before `until_ms`.

    Read from `propertiesWithHistory`; a record read without history gives its current value,
    dated by its last update.
    """
    history = (record.get("propertiesWithHistory") or {}).get(name)
    found: list[tuple[str, int]] = []
    if isinstance(history, list):
        for entry in history:
            if not isinstance(entry, Mapping) or entry.get("value") is None:
                continue
            at = epoch_ms(str(entry.get("timestamp") or ""))
            if at is not None:
                found.append((str(entry["value"]), at))
    else:
        value = (record.get("properties") or {}).get(name)
        at = epoch_ms(str(record.get("updatedAt") or record.get("createdAt") or ""))
        if value is not None and at is not None:
            found.append((str(value), at))
    found.sort(key=lambda pair: pair[1])
    before = [pair for pair in found if pair[1] < since_ms]
    inside = [pair for pair in found if since_ms <= pair[1] < until_ms]
    return (before[-1:] if prior else []) + inside


def contact_events(
    record: Mapping[str, Any],
    since_ms: int,
    until_ms: int,
    now_ms: int,
    m: HubSpotMapping,
    out: Mapped,
    prior: bool = True,
) -> None:
    """Map one contact (with `propertiesWithHistory`) through the webhook's property mapping."""
    contact_id = str(record["id"])
    batch = HubSpotBatch()
    for name in contact_properties(m):
        for value, at in versions(record, name, since_ms, until_ms, prior):
            if value.strip() == "":
                continue  # a property cleared: the webhook mapping has nothing to say about it either
            contact_change(
                batch, contact_id, name, value, at, now_ms, m, property_change_id("contact", contact_id, name, at)
            )
    # A "no" is a version of a record (`said_no_record`): the canonical JSON form names it.
    said_no = EventType.NOT_INTERESTED
    out.events += [
        Versioned(e, said_no_record(contact_id, e.occurred_ms) if e.type is said_no else None) for e in batch.events
    ]
    out.ignored.update(batch.ignored)


def deal_history_events(
    record: Mapping[str, Any],
    contact_ids: list[str],
    since_ms: int,
    until_ms: int,
    m: HubSpotMapping,
    out: Mapped,
    prior: bool = True,
) -> None:
    """Map one deal's stage and amount history: one `deal_updated` per version and associated contact."""
    deal_id = str(record["id"])
    for name in sorted(m.deal_properties):
        for value, at in versions(record, name, since_ms, until_ms, prior):
            data = deal_change(deal_id, name, value, m)
            if isinstance(data, str):
                out.ignored[data] += 1
                continue
            op: DealOp = {
                "op": "deal",
                "crm": "hubspot",
                "deal_id": deal_id,
                "id": property_change_id("deal", deal_id, name, at),
                "at": at,
                "data": data,
            }
            out.add(deal_events(op, contact_ids))


def engagement_record_events(
    object_type: str, record: Mapping[str, Any], contact_ids: list[str], m: HubSpotMapping, out: Mapped
) -> None:
    """Map one call, email or meeting exactly as the webhook path maps the record it fetches."""
    props = record.get("properties") or {}
    stamps = (props.get("hs_lastmodifieddate"), record.get("updatedAt"), record.get("createdAt"))
    at = next((ms for ms in (epoch_ms(str(s or "")) for s in stamps) if ms is not None), None)
    if at is None:
        out.ignored[f"{object_type}:undated"] += 1
        return
    mapped = engagement_versions(object_type, dict(record), contact_ids, at, m)
    if not mapped:
        out.ignored[f"{object_type}:unmapped"] += 1
    out.events.extend(mapped)
