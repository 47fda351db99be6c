"""An activity edited in the CRM counts once, as its latest version, in any arrival order."""

from __future__ import annotations

import itertools

import fakeredis
import pytest

from rules.errors import SchemaError
from rules.events import Crm, Event, EventType, parse_event, versioned
from tests.rules_helpers import at
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.store import LeadStore

P = default_policy()
RAW = {"id": "a", "type": "call_attempted", "crm": "hubspot", "lead_id": "1", "occurred_at": "2026-03-02T10:00:00Z"}


def call(kind: str, modified_hours: float, event_id: str | None = None) -> Event:
    etype = EventType(kind)
    data = versioned("sf:task:00T1", at(0, modified_hours))
    return Event(event_id or f"sf:00T1:{kind}", etype, Crm.SALESFORCE, "00Q1", at(0), data)


def counters_after(*batches: list[Event]) -> dict[str, int]:
    store = LeadStore(fakeredis.FakeRedis())
    for batch in batches:
        store.apply_batch(batch, Decider(P, at(1)))
    from rules.counters import fold

    return fold(store.history("salesforce", "00Q1") or []).public()


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_a_call_corrected_to_connected_counts_once_as_connected_in_any_order(order: tuple[int, ...]) -> None:
    versions = [call("call_attempted", 0), call("call_connected", 2), call("call_attempted", 1, "stale-redelivery")]
    got = counters_after(*([versions[i]] for i in order))
    assert (got["connected_calls"], got["call_attempts"], got["outbound_touches"]) == (1, 0, 1)


def test_the_same_version_twice_is_a_duplicate_and_a_tie_is_decided_by_the_event_key() -> None:
    a, b = call("call_attempted", 1, "x-a"), call("call_connected", 1, "x-b")
    assert counters_after([a, b]) == counters_after([b], [a], [b])


def test_canonical_events_carry_a_version() -> None:
    raw = {**RAW, "version": {"record": "call-9", "modified_at": "2026-03-02T11:00:00+01:00"}}
    event = parse_event(raw, "events[0]", at(10))
    assert event.data == versioned("call-9", at(0))


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("call-9", "events[0].version must be"),
        ({"record": "call-9"}, "events[0].version must be"),
        ({"record": "", "modified_at": "2026-03-02T10:00:00Z"}, "events[0].version.record"),
        ({"record": "call-9", "modified_at": "yesterday"}, "events[0].version.modified_at"),
        ({"record": "c", "modified_at": "2026-03-02T10:00:00Z", "by": "x"}, "events[0].version must be"),
    ],
)
def test_a_bad_version_is_refused_naming_the_field(version: object, problem: str) -> None:
    with pytest.raises(SchemaError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_event({**RAW, "version": version}, "events[0]", at(10))


@pytest.mark.parametrize("reverse", [False, True])
def test_a_hubspot_call_whose_disposition_was_set_later_counts_once_as_connected(reverse: bool) -> None:
    from rules.counters import fold
    from rules.hubspot_map import HubSpotMapping, engagement_events
    from worker.eventlog import to_logged

    connected = next(iter(HubSpotMapping().connected_dispositions))
    props = {"hs_timestamp": str(at(0)), "hs_call_direction": "OUTBOUND"}
    created = {"id": "55", "properties": {**props, "hs_lastmodifieddate": str(at(0))}}
    edited = {
        "id": "55",
        "properties": {**props, "hs_call_disposition": connected, "hs_lastmodifieddate": str(at(0, 2))},
    }
    versions = engagement_events("calls", created, ["901"], at(0)) + engagement_events(
        "calls", edited, ["901"], at(0, 2)
    )
    assert [e.type for e in versions] == [EventType.CALL_ATTEMPTED, EventType.CALL_CONNECTED]
    counters = fold(to_logged(e) for e in (versions[::-1] if reverse else versions)).public()
    assert (counters["connected_calls"], counters["call_attempts"]) == (1, 0)
