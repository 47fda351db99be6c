"""The backfill's pure mapping (rules/hubspot_history.py) and the canonical JSON form of events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.events import Crm, Event, EventType, format_ms, parse_event, to_canonical, versioned
from rules.hubspot_history import Mapped, contact_events, engagement_record_events, versions
from rules.hubspot_map import HubSpotMapping, parse_hubspot_batch

NOW_MS = 1_790_000_000_000
DAY = 86_400_000
M = HubSpotMapping()


def record(**history: list[tuple[str, int]]) -> dict[str, object]:
    return {
        "id": "42",
        "properties": {},
        "propertiesWithHistory": {
            name: [{"value": v, "timestamp": format_ms(t), "sourceType": "CRM_UI"} for v, t in reversed(h)]
            for name, h in history.items()
        },
    }


def test_versions_keep_the_value_in_force_at_since_and_the_changes_before_until() -> None:
    r = record(industry=[("A", 1 * DAY), ("B", 2 * DAY), ("C", 5 * DAY), ("D", 9 * DAY)])
    assert versions(r, "industry", 3 * DAY, 9 * DAY) == [("B", 2 * DAY), ("C", 5 * DAY)]
    assert versions(r, "industry", 10 * DAY, 11 * DAY) == [("D", 9 * DAY)]
    assert versions(r, "missing", 0, 11 * DAY) == []


def test_without_prior_only_the_changes_inside_the_window_are_kept() -> None:
    r = record(industry=[("A", 1 * DAY), ("B", 2 * DAY), ("C", 5 * DAY), ("D", 9 * DAY)])
    assert versions(r, "industry", 3 * DAY, 9 * DAY, prior=False) == [("C", 5 * DAY)]
    assert versions(r, "industry", 10 * DAY, 11 * DAY, prior=False) == []


def test_a_not_interested_status_is_counted_only_where_the_portal_names_it() -> None:
    at = NOW_MS - DAY
    hook = [{"subscriptionType": "contact.propertyChange", "objectId": 42, "occurredAt": at, "eventId": 1,
             "propertyName": "hs_lead_status", "propertyValue": "not_interested"}]  # fmt: skip
    assert parse_hubspot_batch(hook, NOW_MS, M).events == []  # HubSpot ships no such status
    said_no = HubSpotMapping(not_interested_lead_statuses=frozenset({"NOT_INTERESTED"}))
    events = parse_hubspot_batch(hook, NOW_MS, said_no).events
    assert [(e.id, e.type) for e in events] == [(f"hs:contact:42:hs_lead_status:{at}", EventType.NOT_INTERESTED)]


def test_a_backfilled_no_names_its_record_so_its_canonical_form_reads_back() -> None:
    said_no = HubSpotMapping(not_interested_lead_statuses=frozenset({"NOT_INTERESTED"}))
    out = Mapped()
    contact_events(record(hs_lead_status=[("NOT_INTERESTED", NOW_MS - DAY)]), 0, NOW_MS, NOW_MS, said_no, out)
    [item] = out.events
    assert item.event.type is EventType.NOT_INTERESTED and item.record is not None
    assert parse_event(to_canonical(item.event, item.record), "e", 2**62) == item.event


def test_without_history_the_current_value_is_dated_by_the_last_update() -> None:
    r = {"id": "1", "properties": {"industry": "A"}, "updatedAt": format_ms(4 * DAY)}
    assert versions(r, "industry", 0, 10 * DAY) == [("A", 4 * DAY)]


def test_a_contact_version_means_what_the_webhook_for_that_change_means() -> None:
    at = NOW_MS - DAY
    hooks = [
        {"subscriptionType": "contact.propertyChange", "objectId": 42, "occurredAt": at, "eventId": n,
         "propertyName": name, "propertyValue": value}
        for n, (name, value) in enumerate(
            [("hs_email_optout", "true"), ("lifecyclestage", "customer"), ("hs_lead_status", "OPEN"),
             ("hs_analytics_source", "REFERRALS"), ("hs_sales_email_last_replied", str(at - 5))]
        )
    ]  # fmt: skip
    webhook = parse_hubspot_batch(hooks, NOW_MS, M).events
    out = Mapped()
    history = {h["propertyName"]: [(str(h["propertyValue"]), at)] for h in hooks}
    contact_events(record(**history), 0, NOW_MS, NOW_MS, M, out)  # type: ignore[arg-type]
    backfilled = [v.event for v in out.events]
    shape = lambda events: sorted((e.type, e.lead_id, e.occurred_ms, tuple(sorted(e.data.items()))) for e in events)  # noqa: E731
    assert shape(backfilled) == shape(webhook)
    # One id both ways: the reply on its time, the others on (contact, property, occurredAt = version time).
    assert sorted(e.id for e in backfilled) == sorted(e.id for e in webhook)
    assert f"hs:contact:42:hs_lead_status:{at}" in {e.id for e in webhook}


def test_an_undated_engagement_is_counted_as_ignored() -> None:
    out = Mapped()
    engagement_record_events("calls", {"id": "1", "properties": {}}, ["42"], M, out)
    assert out.events == [] and out.ignored == {"calls:undated": 1}


@given(
    ms=st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000),
    modified=st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000),
    record_name=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
)
def test_to_canonical_reads_back_as_the_same_event(ms: int, modified: int, record_name: str) -> None:
    plain = Event("e1", EventType.DEAL_UPDATED, Crm.HUBSPOT, "7", ms, {"deal_id": "d", "amount": 12.5, "stage": "x"})
    assert parse_event(to_canonical(plain), "e", 2**62) == plain
    version = versioned(record_name, modified)
    call = Event("e2", EventType.CALL_CONNECTED, Crm.HUBSPOT, "7", ms, version)
    assert parse_event(to_canonical(call, record_name), "e", 2**62) == call


def test_to_canonical_refuses_a_versioned_event_without_its_record_name() -> None:
    call = Event("e2", EventType.CALL_ATTEMPTED, Crm.HUBSPOT, "7", NOW_MS, versioned("hs:calls:1:7:call", NOW_MS))
    with pytest.raises(ValueError, match="name must be given"):
        to_canonical(call)
    with pytest.raises(ValueError, match="name must be given"):
        to_canonical(call, "hs:calls:2:7:call")
