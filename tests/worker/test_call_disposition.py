"""A HubSpot call whose disposition is set after it was logged: fetched again and mapped (real HTTP, fake HubSpot)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from rules.events import EventType
from rules.hubspot_map import parse_hubspot_batch
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from worker.crm.hubspot_client import HubSpotClient
from worker.hubspot_ops import fetch_events

CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"  # HubSpot's default "Connected" outcome
NO_ANSWER = "73a0d17f-1163-4015-bdd5-ec830791da20"


@pytest.fixture
def client(server: FakeHubSpotServer) -> Iterator[HubSpotClient]:
    with HubSpotClient(server.url, TOKEN, None, backoff_base_s=0.01, backoff_cap_s=0.05) as built:
        yield built


def webhook(kind: str, call_id: int, now_ms: int, event_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": event_id, "subscriptionId": 1, "portalId": 62515, "appId": 54321, "occurredAt": now_ms - 1000,
        "subscriptionType": kind, "attemptNumber": 0, "objectId": call_id, "objectTypeId": "0-48", **extra,
    }  # fmt: skip


def test_a_disposition_set_later_is_fetched_and_maps_to_a_connected_call(
    server: FakeHubSpotServer, client: HubSpotClient
) -> None:
    fake: FakeHubSpot = server.fake
    now = int(time.time() * 1000)
    fake.add_contact("201", "lead@example.com")
    logged_at = str(now - 3_600_000)
    fake.add_call("77", "201", hs_timestamp=logged_at, hs_call_direction="OUTBOUND")  # no disposition yet

    created = parse_hubspot_batch([webhook("object.creation", 77, now, 1)], now_ms=now)
    (attempt,) = fetch_events(created.ops, client)
    assert (attempt.type, attempt.lead_id, attempt.id) == (EventType.CALL_ATTEMPTED, "201", "hs:calls:77:201")

    # The rep sets the outcome afterwards; HubSpot says only that the property changed.
    fake.set_properties("calls", "77", hs_call_disposition=CONNECTED)
    changed = parse_hubspot_batch(
        [webhook("object.propertyChange", 77, now, 2, propertyName="hs_call_disposition", propertyValue=CONNECTED)],
        now_ms=now,
    )
    assert [(op["op"], op["object_type"], op["object_id"]) for op in changed.ops] == [("engagement", "calls", "77")]
    (connected,) = fetch_events(changed.ops, client)
    assert (connected.type, connected.lead_id) == (EventType.CALL_CONNECTED, "201")
    # Timed when the call happened, and keyed apart from the attempt, as a meeting's outcome is.
    assert connected.occurred_ms == int(logged_at)
    assert connected.id == "hs:calls:77:201:call_connected" != attempt.id

    fetches = fake.api_calls("GET", "/crm/v3/objects/calls/77")
    assert len(fetches) == 2
    assert "hs_call_disposition" in fetches[-1]["query"]["properties"]
    assert fetches[-1]["query"]["associations"] == "contacts"


def test_a_call_logged_connected_keeps_one_key_however_often_it_is_fetched(
    server: FakeHubSpotServer, client: HubSpotClient
) -> None:
    now = int(time.time() * 1000)
    server.fake.add_contact("201")
    server.fake.add_call("78", "201", hs_timestamp=str(now), hs_call_disposition=CONNECTED)
    ops = parse_hubspot_batch(
        [
            webhook("object.creation", 78, now, 1),
            webhook("object.propertyChange", 78, now, 2, propertyName="hs_call_disposition", propertyValue=CONNECTED),
        ],
        now_ms=now,
    ).ops
    events = fetch_events(ops, client)
    assert {e.id for e in events} == {"hs:calls:78:201:call_connected"}  # the store keeps one


def test_other_call_property_changes_are_not_fetched() -> None:
    now = int(time.time() * 1000)
    batch = parse_hubspot_batch(
        [
            webhook("object.propertyChange", 79, now, 1, propertyName="hs_call_title", propertyValue="x"),
            webhook("object.propertyChange", 79, now, 2, propertyName="hs_call_disposition", propertyValue=NO_ANSWER),
        ],
        now_ms=now,
    )
    assert [op["object_id"] for op in batch.ops] == ["79"]
    assert batch.ignored == {"object.propertyChange": 1}
