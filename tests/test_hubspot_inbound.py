"""POST /webhooks/hubspot on fakeredis: signatures, mapping, operations."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.events import EventType
from rules.hubspot_map import engagement_events, parse_hubspot_batch
from tests.helpers import ADMIN_TOKEN, awkward_values, json_values
from webhooks import create_app
from webhooks.hubspot_signatures import sign_v1, sign_v3
from worker.config import Config
from worker.decide import Decider
from worker.hubspot_ops import fetch_events
from worker.policyfile import default_policy
from worker.queues import make_queue
from worker.store import LeadStore

SECRET = "hubspot-client-secret"
URL = "http://localhost/webhooks/hubspot"


@pytest.fixture
def hs_client(fake_redis: fakeredis.FakeRedis) -> FlaskClient:
    config = Config.from_env({"HUBSPOT_CLIENT_SECRET": SECRET, "PRUNER_ADMIN_TOKEN": ADMIN_TOKEN})
    return create_app(config, fake_redis).test_client()


def hs_event(kind: str, object_id: int = 101, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": extra.pop("eventId", 7),
        "subscriptionId": 12345,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": int(time.time() * 1000) - 60_000,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
        **extra,
    }


def post(client: FlaskClient, events: Any, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    body = json.dumps(events).encode() if body is None else body
    ts = str(int(time.time() * 1000))
    if headers is None:
        headers = {"X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", URL, body, ts), "X-HubSpot-Request-Timestamp": ts}
    return client.post("/webhooks/hubspot", data=body, headers={**headers, "Content-Type": "application/json"})


def queued_job(conn: fakeredis.FakeRedis) -> Any:
    queue = make_queue(conn)
    assert queue.count == 1
    return queue.jobs[0]


def test_signed_batch_is_mapped_and_queued_as_one_job(hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    events = [
        hs_event("contact.propertyChange", propertyName="hs_email_optout", propertyValue="true"),
        hs_event("contact.propertyChange", eventId=8, propertyName="hs_lead_status", propertyValue="IN_PROGRESS"),
        hs_event("contact.privacyDeletion", object_id=102),
        hs_event("contact.merge", object_id=103, primaryObjectId=103, mergedObjectIds=[104, 105]),
        hs_event("object.creation", object_id=9001, objectTypeId="0-48"),
        hs_event("company.creation", object_id=5),
    ]
    response = post(hs_client, events)
    assert response.status_code == 204, response.get_data(as_text=True)
    job = queued_job(fake_redis)
    kinds = [e[1] for e in job.args[0]]
    assert kinds == ["do_not_contact", "reopened", "erasure_requested"]
    assert [op["op"] for op in job.kwargs["ops"]] == ["merge", "engagement"]


def test_v1_signature_when_the_header_says_so(hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = json.dumps([hs_event("contact.privacyDeletion")]).encode()
    headers = {"X-HubSpot-Signature": sign_v1(SECRET, body), "X-HubSpot-Signature-Version": "v1"}
    assert post(hs_client, None, body, headers).status_code == 204


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"events": []}).encode(), 400, "must be a JSON array"),
        (json.dumps([{"subscriptionType": "contact.creation"}]).encode(), 400, "[0].occurredAt is required"),
        (json.dumps([hs_event("contact.creation")] * 101).encode(), 400, "at most 100 events"),
        (
            json.dumps([hs_event("contact.propertyChange", propertyName="industry", propertyValue="x\ud800")]).encode(),
            400,
            "not valid JSON",
        ),
    ],
    ids=["garbage", "object", "missing-field", "too-many", "lone-surrogate"],
)
def test_garbage_with_a_valid_signature_is_400(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes, status: int, detail: str
) -> None:
    response = post(hs_client, None, body)
    assert response.status_code == status
    assert detail in response.get_json()["detail"]
    assert make_queue(fake_redis).count == 0


def test_bad_signatures_are_401(hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = json.dumps([hs_event("contact.privacyDeletion")]).encode()
    now = str(int(time.time() * 1000))
    stale = str(int(time.time() * 1000) - 10 * 60_000)
    cases = [
        ({}, body, "missing X-HubSpot-Signature-v3"),
        (
            {"X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", URL, body, stale), "X-HubSpot-Request-Timestamp": stale},
            body,
            "s old",
        ),
        (
            {"X-HubSpot-Signature-v3": sign_v3("other", "POST", URL, body, now), "X-HubSpot-Request-Timestamp": now},
            body,
            "does not match",
        ),
        (
            {"X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", URL, body, now), "X-HubSpot-Request-Timestamp": now},
            body + b" ",
            "does not match",
        ),
        (
            {
                "X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", "http://evil/x", body, now),
                "X-HubSpot-Request-Timestamp": now,
            },
            body,
            "does not match",
        ),
    ]
    for headers, sent, detail in cases:
        response = post(hs_client, None, sent, headers)
        assert response.status_code == 401 and detail in response.get_json()["detail"]
    assert make_queue(fake_redis).count == 0


def test_unknown_subscriptions_are_acknowledged_not_queued(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis
) -> None:
    assert post(hs_client, [hs_event("ticket.creation"), hs_event("company.deletion")]).status_code == 204
    assert make_queue(fake_redis).count == 0


def test_unconfigured_is_503(fake_redis: fakeredis.FakeRedis) -> None:
    client = create_app(Config.from_env({}), fake_redis).test_client()
    assert post(client, [hs_event("contact.creation")]).status_code == 503


def test_reply_properties_dedup_on_the_reply_time() -> None:
    reply_at = 1_790_000_000_000
    batch = parse_hubspot_batch(
        [
            hs_event("contact.propertyChange", propertyName="hs_sales_email_last_replied", propertyValue=str(reply_at)),
            hs_event(
                "contact.propertyChange",
                eventId=9,
                propertyName="hs_email_last_reply_date",
                propertyValue="2026-09-21T14:13:20Z",
            ),
        ],
        now_ms=int(time.time() * 1000),
    )
    assert [e.id for e in batch.events] == [f"hs:reply:101:{reply_at}", f"hs:reply:101:{reply_at}"]
    assert batch.events[0].occurred_ms == reply_at


class FakeReader:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def get_object(
        self, object_type: str, object_id: str, properties: list[str], associations: list[str]
    ) -> dict[str, Any]:
        self.calls.append((object_type, object_id))
        props = {
            "calls": {"hs_call_direction": "OUTBOUND", "hs_call_disposition": "73a0d17f-1163-4015-bdd5-ec830791da20"},
            "emails": {"hs_email_direction": "INCOMING_EMAIL"},
            "meetings": {"hs_meeting_outcome": "NO_SHOW"},
        }[object_type]
        return {
            "id": object_id,
            "properties": {"hs_timestamp": "2026-11-20T10:00:00Z", **props},
            "associations": {"contacts": {"results": [{"id": "201"}, {"id": "202"}]}},
        }

    def associated_ids(self, from_type: str, object_id: str, to_type: str) -> list[str]:
        return ["201"]


def test_thin_engagements_are_fetched_and_mapped() -> None:
    now = int(time.time() * 1000)
    batch = parse_hubspot_batch(
        [
            hs_event("object.creation", object_id=1, objectTypeId="0-48"),
            hs_event("object.creation", object_id=2, objectTypeId="0-49"),
            hs_event("object.creation", object_id=3, objectTypeId="0-47"),
            hs_event("deal.propertyChange", object_id=4, propertyName="amount", propertyValue="60000"),
        ],
        now_ms=now,
    )
    events = fetch_events(batch.ops, FakeReader())
    assert [(e.type, e.lead_id) for e in events] == [
        (EventType.CALL_ATTEMPTED, "201"),
        (EventType.CALL_ATTEMPTED, "202"),
        (EventType.EMAIL_REPLIED, "201"),
        (EventType.EMAIL_REPLIED, "202"),
        (EventType.MEETING_NO_SHOW, "201"),
        (EventType.MEETING_NO_SHOW, "202"),
        (EventType.DEAL_UPDATED, "201"),
    ]
    assert events[-1].data == {"deal_id": "4", "amount": 60000.0}


def test_connected_disposition_is_a_conversation() -> None:
    record = {"id": "9", "properties": {"hs_call_disposition": "f240bbac-87c9-4f6e-bf70-924b57d47db7"}}
    assert engagement_events("calls", record, ["1"], 5)[0].type is EventType.CALL_CONNECTED


def test_merge_folds_histories_into_the_survivor(fake_redis: fakeredis.FakeRedis) -> None:
    from rules.events import Crm, Event

    store = LeadStore(fake_redis)
    decide = Decider(default_policy(), int(time.time() * 1000))
    t = int(time.time() * 1000) - 86_400_000
    store.apply_batch(
        [
            Event("a", EventType.NOT_INTERESTED, Crm.HUBSPOT, "104", t, {}),
            Event("b", EventType.EMAIL_SENT, Crm.HUBSPOT, "103", t, {}),
        ],
        decide,
    )
    store.apply_batch([Event("c", EventType.NOT_INTERESTED, Crm.HUBSPOT, "105", t + 1, {})], decide)
    update = store.merge("hubspot", "103", ["104", "105"], decide)
    assert update is not None
    assert store.history("hubspot", "104") is None and store.history("hubspot", "105") is None
    assert (store.state("hubspot", "103") or {})["state"] == "LOST"  # two "no"s across the merged records
    assert store.merge("hubspot", "103", ["104", "105"], decide) is None  # redelivered merge: no-op


def test_portal_specific_names_come_from_the_policy() -> None:
    from rules.policy import parse_policy
    from worker.policyfile import default_policy

    policy = parse_policy(
        "hubspot:\n  optout_property: custom_optout\n  open_lead_statuses: [working]\n"
        "  profile_properties: {lead_origin: source}\n",
        default_policy(),
    )
    mapping = policy.hubspot
    batch = parse_hubspot_batch(
        [
            hs_event("contact.propertyChange", propertyName="custom_optout", propertyValue="true"),
            hs_event("contact.propertyChange", eventId=8, propertyName="hs_lead_status", propertyValue="WORKING"),
            hs_event("contact.propertyChange", eventId=9, propertyName="lead_origin", propertyValue="webinar"),
            hs_event("contact.propertyChange", eventId=10, propertyName="hs_email_optout", propertyValue="true"),
        ],
        now_ms=int(time.time() * 1000),
        mapping=mapping,
    )
    assert [(e.type.value, dict(e.data)) for e in batch.events] == [
        ("do_not_contact", {"channels": ["email"]}),
        ("reopened", {}),
        ("lead_profile", {"source": "webinar"}),
    ]
    assert batch.ignored == {"property:hs_email_optout": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hubspot:\n  optout_propety: x\n", "hubspot.optout_propety is not a known key"),
        ("hubspot:\n  profile_properties: {industry: sector}\n", "hubspot.profile_properties.industry must be one of"),
        ("hubspot:\n  open_lead_statuses: OPEN\n", "hubspot.open_lead_statuses must be a list"),
    ],
)
def test_bad_hubspot_policy_keys_are_named(text: str, message: str) -> None:
    from rules.errors import PolicyError
    from rules.policy import parse_policy
    from worker.policyfile import default_policy

    with pytest.raises(PolicyError, match=message):
        parse_policy(text, default_policy())


@pytest.mark.parametrize("amount", ["1e999", 10**400])
def test_a_deal_amount_no_float_can_hold_is_ignored_not_mapped(amount: Any) -> None:
    batch = parse_hubspot_batch(
        [hs_event("deal.propertyChange", object_id=4, propertyName="amount", propertyValue=amount)],
        now_ms=int(time.time() * 1000),
    )
    assert batch.ops == [] and batch.ignored["deal.amount:unparsable"] == 1


_KINDS = ["contact.propertyChange", "contact.privacyDeletion", "contact.deletion", "contact.merge"]
_KINDS += ["deal.propertyChange", "object.creation", "contact.creation"]
_FIELDS = ["objectId", "occurredAt", "propertyName", "propertyValue", "mergedObjectIds", "primaryObjectId"]
_FIELDS += ["objectTypeId", "portalId", "eventId", "subscriptionType"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(_KINDS),
    field=st.sampled_from(_FIELDS),
    value=awkward_values | json_values,
    prop=st.sampled_from(["hs_email_optout", "hs_lead_status", "amount", "dealstage", "industry"]),
)
def test_any_signed_hubspot_event_gets_204_or_400_never_500(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, kind: str, field: str, value: Any, prop: str
) -> None:
    # One field of an otherwise well-formed event replaced by anything JSON can carry.
    fake_redis.flushdb()
    raw = hs_event(kind, propertyName=prop, propertyValue="x", mergedObjectIds=[104], objectTypeId="0-48")
    raw[field] = value
    response = post(hs_client, [raw])
    assert response.status_code in (204, 400), (response.status_code, response.get_json())
    assert make_queue(fake_redis).count <= (1 if response.status_code == 204 else 0)
