"""POST /webhooks/hubspot on fakeredis: signatures, mapping, operations."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rules.events import Event, EventType
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
    env = {"HUBSPOT_CLIENT_SECRET": SECRET, "PRUNER_ADMIN_TOKEN": ADMIN_TOKEN, "PRUNER_INBOUND_RATE_LIMIT": "off"}
    return create_app(Config.from_env(env), fake_redis).test_client()


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
    # Where HUBSPOT_SIGNATURE_VERSIONS=v3, the same request (no timestamp: replayable) is refused.
    env = {"HUBSPOT_CLIENT_SECRET": SECRET, "HUBSPOT_SIGNATURE_VERSIONS": "v3"}
    strict = create_app(Config.from_env(env), fake_redis).test_client()
    refused = post(strict, None, body, headers)
    assert refused.status_code == 401 and "sign with v3" in refused.get_json()["detail"]


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
        ("hubspot:\n  not_interested_lead_statuses: [open]\n", "hubspot.not_interested_lead_statuses cannot also"),
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


# Strings str.isdigit accepts but int() refuses or cannot afford (superscripts, 5,000 digits),
# and other digits int() does accept (Arabic-Indic): all once reached int() and gave 500s.
_DIGITISH = st.sampled_from(["\u00b2", "9" * 5000, "\u0661\u0662", "99999999999999", "0", "-1"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(_KINDS),
    field=st.sampled_from(_FIELDS),
    value=awkward_values | json_values | _DIGITISH,
    prop=st.sampled_from(
        ["hs_email_optout", "hs_lead_status", "amount", "dealstage", "industry", "hs_sales_email_last_replied"]
    ),
    prop_value=st.sampled_from(["x", "true", "1790000000000"]) | _DIGITISH,
)
# The search reaches a reply property with a bad value only now and then: pin the ones seen in review.
@example(kind=_KINDS[0], field="eventId", value=1, prop="hs_sales_email_last_replied", prop_value="\u00b2")
@example(kind=_KINDS[0], field="eventId", value=1, prop="hs_sales_email_last_replied", prop_value="9" * 5000)
def test_any_signed_hubspot_event_gets_204_or_400_never_500(
    hs_client: FlaskClient,
    fake_redis: fakeredis.FakeRedis,
    kind: str,
    field: str,
    value: Any,
    prop: str,
    prop_value: str,
) -> None:
    # One field of an otherwise well-formed event replaced by anything JSON can carry.
    fake_redis.flushdb()
    raw = hs_event(kind, propertyName=prop, propertyValue=prop_value, mergedObjectIds=[104], objectTypeId="0-48")
    raw[field] = value
    response = post(hs_client, [raw])
    assert response.status_code in (204, 400), (response.status_code, response.get_json())
    assert make_queue(fake_redis).count <= (1 if response.status_code == 204 else 0)


class GoneReader(FakeReader):
    """A reader for which some records were deleted in HubSpot, and which may be unavailable."""

    def __init__(self, gone: set[str], down: bool = False) -> None:
        super().__init__()
        self.gone, self.down = gone, down

    def _check(self, object_id: str) -> None:
        from worker.crm.base import TransientCrmError
        from worker.crm.hubspot_responses import HubSpotNotFound

        if self.down:
            raise TransientCrmError("HubSpot answered 503 after retries")
        if object_id in self.gone:
            raise HubSpotNotFound(404, f"HubSpot record {object_id} was not found")

    def get_object(
        self, object_type: str, object_id: str, properties: list[str], associations: list[str]
    ) -> dict[str, Any]:
        self._check(object_id)
        return super().get_object(object_type, object_id, properties, associations)

    def associated_ids(self, from_type: str, object_id: str, to_type: str) -> list[str]:
        self._check(object_id)
        return super().associated_ids(from_type, object_id, to_type)


def test_a_record_deleted_in_hubspot_is_skipped_not_fatal_to_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    from worker.crm.base import TransientCrmError

    batch = parse_hubspot_batch(
        [
            hs_event("object.creation", object_id=1, objectTypeId="0-48"),
            hs_event("object.creation", object_id=2, objectTypeId="0-49"),
            hs_event("deal.propertyChange", object_id=555, propertyName="dealstage", propertyValue="closedwon"),
            hs_event("deal.propertyChange", object_id=4, eventId=8, propertyName="amount", propertyValue="10"),
        ],
        now_ms=int(time.time() * 1000),
    )
    with caplog.at_level("INFO", logger="worker.hubspot_ops"):
        events = fetch_events(batch.ops, GoneReader({"1", "555"}))
    assert [(e.type, e.lead_id) for e in events] == [
        (EventType.EMAIL_REPLIED, "201"),
        (EventType.EMAIL_REPLIED, "202"),
        (EventType.DEAL_UPDATED, "201"),
    ]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'engagement': 1" in logged and "'deal': 1" in logged
    assert "555" not in logged  # counts, never the ids
    # HubSpot being down is not a deletion: the job fails and RQ retries it.
    with pytest.raises(TransientCrmError):
        fetch_events(batch.ops, GoneReader(set(), down=True))


@pytest.mark.parametrize(
    ("extra", "into", "merged"),
    [
        ({"primaryObjectId": 103, "mergedObjectIds": [104], "newObjectId": 900}, "900", ["103", "104"]),
        ({"primaryObjectId": 103, "mergedObjectIds": [104], "newObjectId": 103}, "103", ["104"]),
        ({"primaryObjectId": 103, "mergedObjectIds": [104, 105]}, "103", ["104", "105"]),
        ({"primaryObjectId": 103, "mergedObjectIds": [103, 104], "newObjectId": "900"}, "900", ["103", "104"]),
    ],
    ids=["new-record", "new-is-primary", "no-new", "primary-listed-too"],
)
def test_a_merge_into_a_new_record_folds_the_primary_too(extra: dict[str, Any], into: str, merged: list[str]) -> None:
    batch = parse_hubspot_batch([hs_event("contact.merge", object_id=103, **extra)], now_ms=int(time.time() * 1000))
    assert [(op["into"], op["merged"]) for op in batch.ops] == [(into, merged)]


@pytest.mark.parametrize(
    "value",
    ["99999999999999", "0", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z", "946684799999"],
    ids=["year-5138", "zero", "year-9999", "last-century", "just-before-2000"],
)
def test_reply_times_out_of_range_are_ignored(value: str) -> None:
    batch = parse_hubspot_batch(
        [hs_event("contact.propertyChange", propertyName="hs_sales_email_last_replied", propertyValue=value)],
        now_ms=int(time.time() * 1000),
    )
    assert batch.events == [] and batch.ignored == {"property:hs_sales_email_last_replied:out_of_range": 1}


def test_reply_times_at_the_bounds_are_kept() -> None:
    now = int(time.time() * 1000)
    batch = parse_hubspot_batch(
        [
            hs_event("contact.propertyChange", propertyName="hs_sales_email_last_replied", propertyValue=value)
            for value in ("946684800000", str(now + 24 * 3600 * 1000))
        ],
        now_ms=now,
    )
    assert [e.occurred_ms for e in batch.events] == [946_684_800_000, now + 24 * 3600 * 1000]


@pytest.mark.parametrize(
    "value", ["\u00b2", "9" * 5000, "\u0661\u0662", " 17\u00b2 "], ids=["superscript", "5000-digits", "arabic", "mixed"]
)
def test_unusable_reply_times_are_ignored_not_500(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, value: str
) -> None:
    # An unparsable value is acknowledged and counted like any other (a 400 would drop the whole batch).
    events = [hs_event("contact.propertyChange", propertyName="hs_sales_email_last_replied", propertyValue=value)]
    batch = parse_hubspot_batch(events, now_ms=int(time.time() * 1000))
    assert batch.events == [] and batch.ignored == {"property:hs_sales_email_last_replied:unparsable": 1}
    assert post(hs_client, events).status_code == 204
    assert make_queue(fake_redis).count == 0


@pytest.mark.parametrize(
    "body",
    [b"[" * 20_000 + b"]" * 20_000, b'["\xff"]', b"[" * 1_000 + b"]" * 1_000],
    ids=["deep-20000", "bad-utf8", "deep-1000"],
)
def test_undecodable_signed_bodies_are_400_malformed_json(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes
) -> None:
    response = post(hs_client, None, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "malformed_json"
    assert response.get_json()["detail"].startswith("the body is not valid JSON")
    assert make_queue(fake_redis).count == 0


@pytest.mark.parametrize(
    "stamp",
    ["\u00b2", "9" * 5000, "\u0661\u0662\u0663", "1" * 17, "-1", "+1693657560000"],
    ids=["superscript", "5000-digits", "arabic-digits", "17-digits", "negative", "plus"],
)
def test_timestamps_not_ascii_epoch_ms_are_401(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, stamp: str
) -> None:
    body = b"[]"
    headers = {
        "X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", URL, body, stamp),
        "X-HubSpot-Request-Timestamp": stamp,
    }
    response = post(hs_client, None, body, headers)
    assert response.status_code == 401, response.get_data(as_text=True)
    assert "X-HubSpot-Request-Timestamp must be epoch milliseconds" in response.get_json()["detail"]


@settings(max_examples=300, deadline=None)
@given(stamp=st.text(max_size=30) | st.integers().map(str) | st.sampled_from(["\u00b2", "9" * 5000, "\u0663"]))
def test_any_timestamp_header_is_a_signature_error_never_a_crash(stamp: str) -> None:
    from webhooks.errors import SignatureError
    from webhooks.hubspot_signatures import verify

    headers = {"X-HubSpot-Signature-v3": "x", "X-HubSpot-Request-Timestamp": stamp}
    with pytest.raises(SignatureError):
        verify(b"[]", headers, SECRET, "POST", URL, int(time.time() * 1000))


def test_v2_signs_the_uri_exactly_as_sent_v3_decoded(hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    from hubspot.utils.signature import Signature

    from webhooks.hubspot_signatures import sign_v2

    path = "/webhooks/hubspot?tenant=acme%40eu"
    body = json.dumps([hs_event("contact.privacyDeletion")]).encode()
    v2 = Signature.get_signature(SECRET, body.decode(), "v2", "http://localhost" + path, "POST")
    assert v2 == sign_v2(SECRET, "POST", "http://localhost" + path, body)
    ts = str(int(time.time() * 1000))
    v3 = sign_v3(SECRET, "POST", "http://localhost/webhooks/hubspot?tenant=acme@eu", body, ts)
    cases = [
        ({"X-HubSpot-Signature": v2, "X-HubSpot-Signature-Version": "v2"}, 204),
        ({"X-HubSpot-Signature-v3": v3, "X-HubSpot-Request-Timestamp": ts}, 204),
        # v2 over the decoded URI is not what HubSpot sends.
        (
            {
                "X-HubSpot-Signature": sign_v2(
                    SECRET, "POST", "http://localhost/webhooks/hubspot?tenant=acme@eu", body
                ),
                "X-HubSpot-Signature-Version": "v2",
            },
            401,
        ),
    ]
    for headers, status in cases:
        response = hs_client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == status, (headers, response.get_data(as_text=True))


_BODIES = (
    st.binary(max_size=40)
    | st.binary(max_size=8).map(lambda b: b'["' + b + b'"]')
    | st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES)
def test_any_signed_body_gets_204_or_400_never_500(
    hs_client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes
) -> None:
    response = post(hs_client, None, body)
    assert response.status_code in (204, 400), (body[:40], response.status_code, response.get_data(as_text=True))


def test_an_opt_out_on_a_record_merged_away_in_the_same_batch_reaches_the_survivor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from rules.events import Crm, Event
    from worker.queues import enqueue_events, make_queue

    monkeypatch.setenv("PRUNER_DRY_RUN", "1")  # no CRM here: actions are recorded, not drained
    conn = fakeredis.FakeRedis()
    queue = make_queue(conn)
    t = int(time.time() * 1000) - 3_600_000
    opt_out = Event("hs:dnc:104", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "104", t, {"channels": ["email"]})
    merge = {"op": "merge", "crm": "hubspot", "into": "103", "merged": ["104"], "at": t + 1}
    enqueue_events(queue, [opt_out.to_wire()], source="hubspot", ops=[merge])
    SimpleWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, with_scheduler=False)
    assert queue.failed_job_registry.count == 0
    store = LeadStore(conn)
    assert store.history("hubspot", "104") is None
    assert (store.state("hubspot", "103") or {}).get("state") == "SUPPRESSED"


def test_a_reply_seen_as_property_and_as_engagement_counts_once() -> None:
    now = int(time.time() * 1000)
    reply_at = now - 120_000
    by_property = parse_hubspot_batch(
        [hs_event("contact.propertyChange", propertyName="hs_sales_email_last_replied", propertyValue=str(reply_at))],
        now_ms=now,
    ).events
    record = {"id": "77", "properties": {"hs_email_direction": "INCOMING_EMAIL", "hs_timestamp": str(reply_at)}}
    by_engagement = engagement_events("emails", record, ["101"], now)
    assert [e.type for e in by_property + by_engagement] == [EventType.EMAIL_REPLIED] * 2
    assert by_property[0].id == by_engagement[0].id  # the store keeps one of them


def test_a_meeting_outcome_set_later_is_fetched_and_counted_as_its_own_event() -> None:
    now = int(time.time() * 1000)
    batch = parse_hubspot_batch(
        [
            hs_event("object.propertyChange", object_id=555, objectTypeId="0-47", propertyName="hs_meeting_outcome"),
            hs_event("object.propertyChange", object_id=556, objectTypeId="0-47", propertyName="hs_meeting_title"),
        ],
        now_ms=now,
    )
    assert [(op["op"], op["object_type"], op["object_id"]) for op in batch.ops] == [("engagement", "meetings", "555")]
    assert batch.ignored == {"object.propertyChange": 1}

    def meeting(outcome: str) -> Event:
        record = {"id": "555", "properties": {"hs_meeting_outcome": outcome, "hs_timestamp": str(now - 3_600_000)}}
        return engagement_events("meetings", record, ["101"], now)[0]

    booked, no_show = meeting("SCHEDULED"), meeting("NO_SHOW")
    assert (booked.type, no_show.type) == (EventType.MEETING_BOOKED, EventType.MEETING_NO_SHOW)
    assert booked.id == "hs:meetings:555:101" and no_show.id != booked.id  # both kept by the store
