"""Salesforce Outbound Messages: parsing, hostile XML, org checks, Ack, and the sObject mapping."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import BadRequest

from rules.errors import SchemaError
from rules.events import EventType, format_ms
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_ids import to_18
from rules.salesforce_map import MapResult, Notification, _Builder, map_notifications, map_records, record_fields
from tests.fakes.salesforce import outbound_message
from webhooks import create_app
from webhooks import salesforce as salesforce_view
from webhooks.salesforce import ACK, MalformedMessage, parse_message, same_org
from worker.config import Config
from worker.config import salesforce_mapping as mapping_from_env
from worker.errors import ConfigError
from worker.queues import make_queue

ORG = "00D000000000001EAA"
NOW = datetime.now(tz=UTC).replace(microsecond=0)
NOW_MS = int(NOW.timestamp() * 1000)
_counter = itertools.count(1)


def sf_id(prefix: str) -> str:
    """A fresh 18-character id with the given key prefix."""
    return to_18(f"{prefix}{next(_counter):012d}")


LEAD = sf_id("00Q")


def stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def note(sobject: str, fields: dict[str, Any], notification_id: str | None = None) -> tuple[str, str, dict[str, Any]]:
    return notification_id or sf_id("04l"), sobject, fields


def mapped(*notes: tuple[str, str, dict[str, Any]], mapping: SalesforceMapping | None = None) -> Any:
    """Parse a real SOAP body (the same path as the view), then map it at NOW."""
    message = parse_message(outbound_message(ORG, list(notes)))
    return map_notifications(message.notifications, NOW_MS, mapping)


def kinds(result: Any) -> list[str]:
    return [e.type.value for e in result.events]


@pytest.fixture
def sf_config() -> Config:
    return Config.from_env({"SALESFORCE_ORG_ID": ORG, "PRUNER_INBOUND_RATE_LIMIT": "off"})


@pytest.fixture
def sf_app(sf_config: Config, fake_redis: fakeredis.FakeRedis) -> Flask:
    return create_app(sf_config, fake_redis, clock=lambda: NOW_MS / 1000)


@pytest.fixture
def sf_client(sf_app: Flask) -> FlaskClient:
    return sf_app.test_client()


def post(client: FlaskClient, body: bytes) -> Any:
    return client.post("/webhooks/salesforce", data=body, headers={"Content-Type": "text/xml; charset=utf-8"})


def queued_events(conn: fakeredis.FakeRedis) -> list[list[Any]]:
    queue = make_queue(conn)
    return [item for job in queue.jobs for item in job.args[0]]


# -- the view ---------------------------------------------------------------------------


def test_ack_is_exact_and_the_message_is_one_job(sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = outbound_message(
        ORG,
        [
            note("Lead", {"Id": LEAD, "LeadSource": "Web", "LastModifiedDate": stamp(NOW - timedelta(hours=1))}),
            note("Task", {"Id": sf_id("00T"), "WhoId": LEAD, "TaskSubtype": "Call", "CallDisposition": "Connected"}),
        ],
    )
    response = post(sf_client, body)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == ACK
    assert ACK == (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
        "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
    )
    queue = make_queue(fake_redis)
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.kwargs["source"] == "salesforce"
    assert [(e[1], e[2], e[3]) for e in job.args[0]] == [
        ("lead_profile", "salesforce", LEAD),
        ("call_connected", "salesforce", LEAD),
    ]


def test_unset_org_is_503_not_configured(fake_redis: fakeredis.FakeRedis) -> None:
    client = create_app(Config.from_env({}), fake_redis).test_client()
    response = post(client, outbound_message(ORG, [note("Lead", {"Id": LEAD, "DoNotCall": True})]))
    assert response.status_code == 503
    assert response.mimetype == "text/xml"
    assert "not configured" in response.get_data(as_text=True)
    assert "<faultcode>soapenv:Server</faultcode>" in response.get_data(as_text=True)
    assert make_queue(fake_redis).count == 0


def test_wrong_org_is_403(sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    response = post(sf_client, outbound_message("00D000000000002EAA", [note("Lead", {"Id": LEAD, "DoNotCall": True})]))
    assert response.status_code == 403
    assert "<soapenv:Fault>" in response.get_data(as_text=True)
    assert make_queue(fake_redis).count == 0


def test_org_id_matches_in_15_and_18_character_forms(fake_redis: fakeredis.FakeRedis) -> None:
    client = create_app(Config.from_env({"SALESFORCE_ORG_ID": ORG[:15]}), fake_redis).test_client()
    assert post(client, outbound_message(ORG, [note("Lead", {"Id": LEAD, "DoNotCall": True})])).status_code == 200
    assert same_org(ORG[:15], ORG) and same_org(ORG, ORG[:15])
    assert not same_org(ORG[:15].lower(), ORG)  # 15-character ids are case-sensitive
    # 18-character ids are not: one pasted in lowercase still matches (its checksum restores the case).
    assert same_org(ORG, ORG.lower()) and same_org(ORG.lower(), ORG)
    other = to_18("00D000000000001".replace("D", "d"))  # differs from ORG only in case
    assert not same_org(other, ORG) and not same_org(other.lower(), ORG)


@pytest.mark.parametrize("value", ["00Q000000000001EAA", "not-an-id", "00D0000000001"])
def test_an_unusable_org_id_stops_the_config(value: str) -> None:
    with pytest.raises(ConfigError, match="SALESFORCE_ORG_ID"):
        Config.from_env({"SALESFORCE_ORG_ID": value})


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        (b"<soapenv:Envelope", "not well-formed XML"),
        (b"", "empty"),
        (b'{"events": []}', "not well-formed XML"),
        (b"<a/>", "not a SOAP 1.1 Envelope"),
        (
            b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/>'
            b"</soapenv:Envelope>",
            "no &lt;notifications&gt;",
        ),
    ],
)
def test_malformed_is_400_fault_with_a_sentence(
    sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes, sentence: str
) -> None:
    response = post(sf_client, body)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "<faultcode>soapenv:Client</faultcode>" in text
    assert sentence in text
    assert make_queue(fake_redis).count == 0


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&lol9;</OrganizationId>
</notifications></soapenv:Body></soapenv:Envelope>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00D000000000001EAA</OrganizationId>
<Notification><Id>04l000000000001AAA</Id><sObject xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>00Q000000000001EAA</sf:Id>
<sf:Description>&xxe;</sf:Description></sObject></Notification>
</notifications></soapenv:Body></soapenv:Envelope>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE soapenv:Envelope SYSTEM "file:///etc/passwd">
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/></soapenv:Envelope>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/evil.dtd"> %ext;]>
<foo/>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY])
def test_hostile_xml_is_refused_at_once_and_leaks_nothing(
    sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes
) -> None:
    started = time.monotonic()
    response = post(sf_client, body)
    assert time.monotonic() - started < 1.0
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "DTD or entities" in text
    assert "root:" not in text and "/bin/" not in text and "passwd" not in text and "lol" not in text
    assert make_queue(fake_redis).count == 0


def test_parse_message_refuses_entities_even_without_the_view() -> None:
    with pytest.raises(MalformedMessage, match="DTD or entities"):
        parse_message(XXE)


def test_redis_down_is_503_fault(sf_config: Config) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    client = create_app(sf_config, fakeredis.FakeRedis(server=server)).test_client()
    response = post(client, outbound_message(ORG, [note("Lead", {"Id": LEAD, "DoNotCall": True})]))
    assert response.status_code == 503
    assert response.mimetype == "text/xml"
    assert "retry later" in response.get_data(as_text=True)


def test_dates_before_year_one_in_utc_are_acknowledged_and_fall_back(
    sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis
) -> None:
    task, event = sf_id("00T"), sf_id("00U")
    created = NOW - timedelta(days=2)
    body = outbound_message(
        ORG,
        [
            # Year 0 in UTC: this used to crash format_ms and answer a JSON 500.
            note(
                "Task",
                {
                    "Id": task,
                    "WhoId": LEAD,
                    "TaskSubtype": "Call",
                    "CallDisposition": "Connected",
                    "CompletedDateTime": "0001-01-01T00:00:00+01:00",
                    "CreatedDate": stamp(created),
                },
            ),
            note("Event", {"Id": event, "WhoId": LEAD, "EndDateTime": "0001-01-01T00:30:00+05:00"}),
        ],
    )
    response = post(sf_client, body)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ACK
    # The task falls back to its next date; the meeting has no usable end, so it is not held.
    assert [(e[0], e[4]) for e in queued_events(fake_redis)] == [
        (f"sf:{task}:call_connected", int(created.timestamp() * 1000)),
        (f"sf:{event}:meeting_booked", NOW_MS),
    ]


_OUT_OF_RANGE = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:30:00+05:00",
    "0001-01-01",
    "1699-12-31T23:59:59Z",
    "4001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
]


@pytest.mark.parametrize("bad", _OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("sobject", "fields", "names"),
    [
        ("Task", {"TaskSubtype": "Call", "WhoId": LEAD}, ["CompletedDateTime", "CreatedDate", "ActivityDate"]),
        ("Lead", {"Id": LEAD, "DoNotCall": True}, ["LastModifiedDate", "CreatedDate"]),
        ("Event", {"WhoId": LEAD}, ["CreatedDate"]),
        ("Opportunity", {"Pruner_Lead_Id__c": LEAD}, ["LastModifiedDate", "CreatedDate"]),
        ("Individual", {"Pruner_Lead_Id__c": LEAD, "ShouldForget": True}, ["LastModifiedDate", "CreatedDate"]),
    ],
)
def test_times_outside_salesforce_range_are_no_time(
    bad: str, sobject: str, fields: dict[str, Any], names: list[str]
) -> None:
    result = mapped(note(sobject, {"Id": sf_id("00T"), **fields, **dict.fromkeys(names, bad)}))
    assert result.events and result.skipped == {}
    assert all(e.occurred_ms == NOW_MS for e in result.events)  # the receive time, as for any unusable date


def test_salesforce_range_bounds_are_kept() -> None:
    earliest = mapped(meeting(EndDateTime="1700-01-01T00:00:00Z"))
    assert kinds(earliest) == ["meeting_booked", "meeting_held"]
    assert earliest.events[1].occurred_ms == int(datetime(1700, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert kinds(mapped(meeting(EndDateTime="1699-12-31T23:59:59Z"))) == ["meeting_booked"]
    # A future time is clamped to the receive time; one past the range is no time at all.
    created = NOW - timedelta(days=2)
    latest = mapped(call(CompletedDateTime="4000-12-31T23:59:59Z", CreatedDate=stamp(created)))
    assert latest.events[0].occurred_ms == NOW_MS
    beyond = mapped(call(CompletedDateTime="4001-01-01T00:00:00Z", CreatedDate=stamp(created)))
    assert beyond.events[0].occurred_ms == int(created.timestamp() * 1000)
    opened = mapped(note("Lead", {"Id": LEAD, "Status": "Open - Not Contacted", "Pruner_Reopened__c": "0001-01-01"}))
    assert kinds(opened) == []  # a marker with an impossible time is neither a time nor "true"


def test_a_time_that_cannot_be_formatted_skips_only_that_event() -> None:
    # The second fence behind _time_ms: whatever reaches the builder never escapes it.
    result = MapResult()
    builder = _Builder(NOW_MS, result)
    builder.add("sf:a", EventType.CALL_CONNECTED, LEAD, -62135600400000)  # 0000-12-31T23:00:00Z
    builder.add("sf:b", EventType.CALL_CONNECTED, LEAD, 10**20)
    builder.add("sf:c", EventType.CALL_CONNECTED, LEAD, NOW_MS)
    assert [e.id for e in result.events] == ["sf:c"]
    assert result.skipped == {"invalid_value": 2}


def test_a_bug_in_the_mapping_answers_a_soap_fault_not_json(
    sf_client: FlaskClient,
    fake_redis: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> MapResult:
        raise RuntimeError(f"boom near {LEAD}")

    monkeypatch.setattr(salesforce_view, "map_notifications", broken)
    response = post(sf_client, outbound_message(ORG, [note("Lead", {"Id": LEAD, "DoNotCall": True})]))
    assert response.status_code == 500
    assert response.mimetype == "text/xml"
    text = response.get_data(as_text=True)
    assert "<faultcode>soapenv:Server</faultcode>" in text
    assert "retry later" in text
    assert "boom" not in text and LEAD not in text and "{" not in text
    assert any(r.exc_info and r.name == "webhooks.salesforce" for r in caplog.records)
    assert make_queue(fake_redis).count == 0


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (BadRequest(f"bad {LEAD}"), 400, "Client"),
        (redis.ConnectionError("down"), 503, "Server"),
    ],
)
def test_http_and_redis_errors_in_the_view_keep_their_status_as_soap_faults(
    sf_client: FlaskClient, monkeypatch: pytest.MonkeyPatch, raised: Exception, status: int, code: str
) -> None:
    def broken(*args: Any, **kwargs: Any) -> MapResult:
        raise raised

    monkeypatch.setattr(salesforce_view, "map_notifications", broken)
    response = post(sf_client, outbound_message(ORG, [note("Lead", {"Id": LEAD, "DoNotCall": True})]))
    assert response.status_code == status
    assert response.mimetype == "text/xml"
    text = response.get_data(as_text=True)
    assert f"<faultcode>soapenv:{code}</faultcode>" in text
    assert LEAD not in text


def test_oversized_body_is_413_fault(sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    response = post(sf_client, b"<a>" + b"x" * (1024 * 1024) + b"</a>")
    assert response.status_code == 413
    assert "<soapenv:Fault>" in response.get_data(as_text=True)
    assert make_queue(fake_redis).count == 0


def test_unknown_sobjects_and_empty_mappings_are_acknowledged(
    sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis
) -> None:
    body = outbound_message(
        ORG,
        [
            note("Contact", {"Id": sf_id("003"), "Email": "someone@example.com"}),
            note("Task", {"Id": sf_id("00T"), "WhoId": sf_id("003"), "TaskSubtype": "Call"}),  # a contact's call
            note("Opportunity", {"Id": sf_id("006"), "StageName": "Prospecting"}),  # no lead link
        ],
    )
    response = post(sf_client, body)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ACK
    assert make_queue(fake_redis).count == 0


def test_same_notification_twice_gives_the_same_event_ids() -> None:
    first = note("Lead", {"Id": LEAD, "Status": "Closed - Not Interested", "LeadSource": "Web"})
    assert [e.id for e in mapped(first).events] == [e.id for e in mapped(first).events]


# -- the mapping ------------------------------------------------------------------------


def test_lead_opt_outs_become_do_not_contact_per_channel() -> None:
    assert [e.data for e in mapped(note("Lead", {"Id": LEAD, "HasOptedOutOfEmail": True})).events] == [
        {"channels": ["email"]}
    ]
    assert [e.data for e in mapped(note("Lead", {"Id": LEAD, "DoNotCall": True})).events] == [{"channels": ["phone"]}]
    both = mapped(note("Lead", {"Id": LEAD, "HasOptedOutOfEmail": True, "DoNotCall": True, "HasOptedOutOfFax": False}))
    assert [(e.type, e.data) for e in both.events] == [(EventType.DO_NOT_CONTACT, {"channels": ["email", "phone"]})]
    # A fact, not an occurrence: the same opt-out in a later notification is the same event.
    again = mapped(note("Lead", {"Id": LEAD, "HasOptedOutOfEmail": True, "DoNotCall": True}))
    assert again.events[0].id == both.events[0].id
    assert kinds(mapped(note("Lead", {"Id": LEAD, "HasOptedOutOfEmail": False, "DoNotCall": False}))) == []


def test_lead_reopened_needs_an_open_status_and_the_marker() -> None:
    assert kinds(mapped(note("Lead", {"Id": LEAD, "Status": "Working - Contacted"}))) == []
    assert (
        kinds(mapped(note("Lead", {"Id": LEAD, "Status": "Closed - Not Converted", "Pruner_Reopened__c": True}))) == []
    )
    flagged = mapped(note("Lead", {"Id": LEAD, "Status": "Working - Contacted", "Pruner_Reopened__c": True}))
    assert kinds(flagged) == ["reopened"]
    when = NOW - timedelta(hours=3)
    timed = note("Lead", {"Id": LEAD, "Status": "Open - Not Contacted", "Pruner_Reopened__c": stamp(when)})
    first, second = mapped(timed).events, mapped((sf_id("04l"), timed[1], timed[2])).events
    assert first[0].occurred_ms == int(when.timestamp() * 1000)
    assert first[0].id == second[0].id  # keyed by the reopen time, not by the notification


def test_lead_not_interested_status_and_profile() -> None:
    result = mapped(
        note(
            "Lead",
            {
                "Id": LEAD,
                "Status": "Closed - Not Interested",
                "LeadSource": "Partner Referral",
                "Industry": "Banking",
                "Rating": "Hot",
                "Email": "ada@example.com",
                "LastModifiedDate": stamp(NOW - timedelta(hours=2)),
            },
        )
    )
    assert kinds(result) == ["not_interested", "lead_profile"]
    profile = result.events[1]
    assert profile.data == {
        "source": "Partner Referral",
        "segment": "Banking",
        "priority": "Hot",
        "email": "ada@example.com",
    }
    assert profile.occurred_ms == int((NOW - timedelta(hours=2)).timestamp() * 1000)
    assert all(e.crm.value == "salesforce" and e.lead_id == LEAD for e in result.events)


def test_lead_ids_are_normalised_to_18_characters() -> None:
    result = mapped(note("Task", {"Id": sf_id("00T"), "WhoId": LEAD[:15], "TaskSubtype": "Call"}))
    assert result.events[0].lead_id == LEAD


def call(**fields: Any) -> tuple[str, str, dict[str, Any]]:
    return note("Task", {"Id": sf_id("00T"), "WhoId": LEAD, "TaskSubtype": "Call", **fields})


def test_calls_connected_attempted_and_not_interested() -> None:
    assert kinds(mapped(call(CallDisposition="Connected"))) == ["call_connected"]
    assert kinds(mapped(call(CallDisposition="spoke"))) == ["call_connected"]
    assert kinds(mapped(call(CallDisposition="Left voicemail", CallDurationInSeconds="61"))) == ["call_connected"]
    assert kinds(mapped(call(CallDisposition="Left voicemail", CallDurationInSeconds="60"))) == ["call_attempted"]
    assert kinds(mapped(call())) == ["call_attempted"]
    assert kinds(mapped(call(CallDisposition="Not interested"))) == ["call_connected", "not_interested"]
    custom = SalesforceMapping.from_dict({"connected_dispositions": ["Talked"], "connected_min_seconds": 300})
    assert kinds(mapped(call(CallDisposition="talked"), mapping=custom)) == ["call_connected"]
    assert kinds(mapped(call(CallDurationInSeconds="200"), mapping=custom)) == ["call_attempted"]
    for junk in ("1e999", "NaN", "a minute"):  # a duration that is no number counts as none
        assert kinds(mapped(call(CallDurationInSeconds=junk))) == ["call_attempted"]


def test_inbound_calls_are_conversations_the_lead_started() -> None:
    task = call(CallType="Inbound", CallDurationInSeconds="45")
    result = mapped(task)
    assert kinds(result) == ["call_connected"]
    assert result.events[0].id == f"sf:{task[2]['Id']}:call_connected"
    assert kinds(mapped(call(CallType="inbound"))) == ["call_connected"]
    assert kinds(mapped(call(CallType="Inbound", CallDisposition="Left voicemail"))) == ["call_connected"]
    assert kinds(mapped(call(CallType="Inbound", CallDisposition="Not interested"))) == [
        "call_connected",
        "not_interested",
    ]


def test_outbound_and_untyped_calls_are_unchanged() -> None:
    for typed in ({"CallType": "Outbound"}, {}, {"CallType": None}, {"CallType": ""}):
        assert kinds(mapped(call(CallDurationInSeconds="45", **typed))) == ["call_attempted"]
        assert kinds(mapped(call(CallDisposition="Connected", **typed))) == ["call_connected"]
        assert kinds(mapped(call(CallDisposition="Not interested", **typed))) == ["call_connected", "not_interested"]


def test_internal_calls_are_not_contact_with_the_lead() -> None:
    result = mapped(call(CallType="Internal", CallDisposition="Connected", CallDurationInSeconds="300"))
    assert kinds(result) == []
    assert result.skipped == {"call_internal": 1}


def test_call_type_field_and_values_are_configurable() -> None:
    custom = SalesforceMapping.from_dict(
        {"call_type_field": "Call_Direction__c", "inbound_call_types": ["Incoming"], "internal_call_types": ["Team"]}
    )
    assert kinds(mapped(call(Call_Direction__c="incoming"), mapping=custom)) == ["call_connected"]
    assert mapped(call(Call_Direction__c="TEAM"), mapping=custom).skipped == {"call_internal": 1}
    assert kinds(mapped(call(CallType="Inbound"), mapping=custom)) == ["call_attempted"]  # not the field read
    with pytest.raises(SchemaError, match="call_type_field"):
        SalesforceMapping.from_dict({"call_type_field": " "})
    with pytest.raises(SchemaError, match="inbound_call_types"):
        SalesforceMapping.from_dict({"inbound_call_types": "Inbound"})
    with pytest.raises(ConfigError, match="call_type_field"):
        mapping_from_env({"SALESFORCE_MAPPING": '{"call_type_field": 5}'})
    assert mapping_from_env({"SALESFORCE_MAPPING": '{"call_type_field": "Dir__c"}'}).call_type_field == "Dir__c"


def test_task_ids_come_from_the_task_so_edits_do_not_count_twice() -> None:
    task = call(CallDisposition="Connected")
    edited = (sf_id("04l"), task[1], {**task[2], "Description": "notes added"})
    assert mapped(task).events[0].id == mapped(edited).events[0].id == f"sf:{task[2]['Id']}:call_connected"


def test_tasks_not_on_a_lead_or_not_done_are_skipped() -> None:
    contact = mapped(note("Task", {"Id": sf_id("00T"), "WhoId": sf_id("003"), "TaskSubtype": "Call"}))
    assert kinds(contact) == [] and contact.skipped["task_not_on_a_lead"] == 1
    planned = mapped(call(IsClosed=False))
    assert kinds(planned) == [] and planned.skipped["task_not_done"] == 1
    other = mapped(note("Task", {"Id": sf_id("00T"), "WhoId": LEAD, "TaskSubtype": "Task"}))
    assert other.skipped["task_subtype_unmapped"] == 1


def test_emails_sent_and_replied() -> None:
    def email(**fields: Any) -> tuple[str, str, dict[str, Any]]:
        return note("Task", {"Id": sf_id("00T"), "WhoId": LEAD, "TaskSubtype": "Email", **fields})

    assert kinds(mapped(email(Subject="Pricing for Q3"))) == ["email_sent"]
    assert kinds(mapped(email(Subject="RE: Pricing for Q3"))) == ["email_replied"]
    assert kinds(mapped(email(Subject="Re: Pricing for Q3"))) == ["email_replied"]
    # The configurable marker wins over the subject guess, both ways.
    assert kinds(mapped(email(Subject="RE: Pricing", Pruner_Inbound__c=False))) == ["email_sent"]
    assert kinds(mapped(email(Subject="Pricing", Pruner_Inbound__c=True))) == ["email_replied"]
    assert kinds(mapped(note("Task", {"Id": sf_id("00T"), "WhoId": LEAD, "TaskSubtype": "ListEmail"}))) == [
        "email_sent"
    ]


def test_task_time_comes_from_the_record_and_never_from_the_future() -> None:
    created = NOW - timedelta(days=2)
    result = mapped(call(CreatedDate=stamp(created), ActivityDate=(NOW - timedelta(days=5)).date().isoformat()))
    assert result.events[0].occurred_ms == int(created.timestamp() * 1000)
    dated = mapped(call(ActivityDate=(NOW - timedelta(days=5)).date().isoformat()))
    assert format_ms(dated.events[0].occurred_ms).endswith("T00:00:00Z")
    future = mapped(call(CreatedDate=stamp(NOW + timedelta(days=3))))
    assert future.events[0].occurred_ms == NOW_MS
    receive_time = mapped(call())
    assert receive_time.events[0].occurred_ms == NOW_MS


def meeting(**fields: Any) -> tuple[str, str, dict[str, Any]]:
    return note("Event", {"Id": sf_id("00U"), "WhoId": LEAD, "CreatedDate": stamp(NOW - timedelta(days=3)), **fields})


def test_meetings_booked_held_no_show_and_rescheduled() -> None:
    future = meeting(EndDateTime=stamp(NOW + timedelta(days=1)))
    result = mapped(future)
    assert kinds(result) == ["meeting_booked"]
    assert result.events[0].data == {"meeting_id": future[2]["Id"]}
    past = meeting(EndDateTime=stamp(NOW - timedelta(hours=1)))
    result = mapped(past)
    assert kinds(result) == ["meeting_booked", "meeting_held"]
    assert result.events[1].occurred_ms == int((NOW - timedelta(hours=1)).timestamp() * 1000)
    assert kinds(mapped(meeting(EndDateTime=stamp(NOW - timedelta(hours=1)), Pruner_Cancelled__c=True))) == [
        "meeting_booked"
    ]
    assert kinds(mapped(meeting(EndDateTime=stamp(NOW - timedelta(hours=1)), Pruner_No_Show__c=True))) == [
        "meeting_booked",
        "meeting_no_show",
    ]
    moved = meeting(
        StartDateTime=stamp(NOW + timedelta(days=2)),
        EndDateTime=stamp(NOW + timedelta(days=2, hours=1)),
        Pruner_Rescheduled__c=True,
    )
    result = mapped(moved)
    assert kinds(result) == ["meeting_booked", "meeting_rescheduled"]
    assert result.events[1].data == {"meeting_id": moved[2]["Id"]}
    first = mapped(meeting(StartDateTime=stamp(NOW), Pruner_Rescheduled__c=True, Pruner_First_Meeting__c=True))
    assert first.events[1].data["first_meeting"] is True
    # The same move re-sent or edited again is one reschedule; a new start time is another.
    again = mapped((sf_id("04l"), moved[1], moved[2]))
    assert again.events[1].id == result.events[1].id
    later = mapped((sf_id("04l"), moved[1], {**moved[2], "StartDateTime": stamp(NOW + timedelta(days=9))}))
    assert later.events[1].id != result.events[1].id


def test_opportunity_needs_the_lead_link() -> None:
    opp = sf_id("006")
    result = mapped(
        note("Opportunity", {"Id": opp, "StageName": "Negotiation", "Amount": "75000.0", "Pruner_Lead_Id__c": LEAD})
    )
    assert kinds(result) == ["deal_updated"]
    assert result.events[0].data == {"deal_id": opp, "stage": "Negotiation", "amount": 75000.0}
    orphan = mapped(note("Opportunity", {"Id": opp, "StageName": "Negotiation"}))
    assert kinds(orphan) == [] and orphan.skipped["opportunity_without_lead"] == 1
    custom = SalesforceMapping.from_dict({"opportunity_lead_field": "Lead__c"})
    linked = mapped(note("Opportunity", {"Id": opp, "Amount": "10", "Lead__c": LEAD[:15]}), mapping=custom)
    assert linked.events[0].lead_id == LEAD
    for bad in ("-5", "1e999"):  # 1e999 parses as infinity
        refused = mapped(note("Opportunity", {"Id": opp, "Amount": bad, "Pruner_Lead_Id__c": LEAD}))
        assert kinds(refused) == [] and refused.skipped["invalid_value"] == 1


def test_individual_forget_and_opt_out() -> None:
    individual = sf_id("0PK")
    result = mapped(
        note(
            "Individual",
            {"Id": individual, "ShouldForget": True, "HasOptedOutSolicit": True, "Pruner_Lead_Id__c": LEAD},
        )
    )
    assert kinds(result) == ["erasure_requested", "do_not_contact"]
    assert result.events[1].data == {"channels": ["all"]}
    orphan = mapped(note("Individual", {"Id": individual, "ShouldForget": True}))
    assert kinds(orphan) == [] and orphan.skipped["individual_without_lead"] == 1


def test_unknown_sobject_is_counted() -> None:
    result = mapped(
        note("Account", {"Id": sf_id("001")}),
        note("Weird<Type", {"Id": sf_id("001")}),
        note("jane.doe@example.com", {"Id": sf_id("001")}),  # a sender's xsi:type, logged as a count
    )
    assert kinds(result) == []
    assert result.skipped == {"unknown_sobject:Account": 1, "unknown_sobject:invalid": 2}


def test_nil_fields_are_absent_values() -> None:
    result = mapped(note("Lead", {"Id": LEAD, "LeadSource": None, "Industry": "Retail"}))
    assert result.events[0].data == {"segment": "Retail"}


def test_mapping_overrides_are_validated() -> None:
    with pytest.raises(SchemaError, match="not_a_setting"):
        SalesforceMapping.from_dict({"not_a_setting": 1})
    with pytest.raises(SchemaError, match="open_statuses"):
        SalesforceMapping.from_dict({"open_statuses": "Open"})
    assert mapping_from_env({"SALESFORCE_MAPPING": '{"open_statuses": ["Open"]}'}).open_statuses == frozenset({"Open"})
    with pytest.raises(ConfigError, match="SALESFORCE_MAPPING"):
        mapping_from_env({"SALESFORCE_MAPPING": "{nope"})
    with pytest.raises(ConfigError, match="SALESFORCE_MAPPING"):
        mapping_from_env({"SALESFORCE_MAPPING": '{"reopened_field": ""}'})


def test_map_notifications_is_pure_over_plain_notifications() -> None:
    result = map_notifications([Notification(sf_id("04l"), "Lead", {"Id": LEAD, "DoNotCall": "true"})], NOW_MS)
    assert kinds(result) == ["do_not_contact"]


_SOBJECTS = ["Lead", "Task", "Event", "Opportunity", "Individual", "Contact"]
_SF_FIELDS = ["Id", "Status", "DoNotCall", "HasOptedOutOfEmail", "WhoId", "TaskSubtype", "CallDisposition"]
_SF_FIELDS += ["ActivityDate", "StartDateTime", "CreatedDate", "LastModifiedDate", "Amount", "StageName"]
_SF_FIELDS += ["Pruner_Lead_Id__c", "Pruner_Reopened__c", "Email", "LeadSource", "IsDeleted", "CallDurationInSeconds"]
_SF_FIELDS += ["CompletedDateTime", "EndDateTime", "CallType"]
_xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=24) | st.sampled_from(
    ["1e999", "-5", "NaN", "2026-13-45T99:99:99Z", "true", "", " ", "00Q000000000001", "x" * 300, "Call"]
)
# Any year a dateTime can spell, with offsets that push year 1 to year 0 (or 9999 to 10000) in UTC.
_offsets = st.sampled_from([UTC, *(timezone(timedelta(hours=h)) for h in (-12, -1, 1, 5, 14))])
_sf_time = (
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=_offsets).map(
        lambda dt: dt.isoformat(timespec="milliseconds")
    )
    | st.dates().map(lambda day: day.isoformat())
    | st.sampled_from([*_OUT_OF_RANGE, "0001-01-01T00:00:00+0100", "Inbound", "Internal"])
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sobject=st.sampled_from(_SOBJECTS),
    fields=st.dictionaries(st.sampled_from(_SF_FIELDS), _xml_text | _sf_time | st.none() | st.booleans(), max_size=5),
)
def test_any_outbound_message_gets_an_ack_or_a_fault_never_a_500(
    sf_client: FlaskClient, fake_redis: fakeredis.FakeRedis, sobject: str, fields: dict[str, Any]
) -> None:
    fake_redis.flushdb()
    # Linked to the lead unless the fields say otherwise, so most examples reach an event
    # (and the time it is stamped with) instead of stopping at "not on a lead".
    linked = {"Id": LEAD, "WhoId": LEAD, "Pruner_Lead_Id__c": LEAD, "TaskSubtype": "Call", "ShouldForget": True}
    response = post(sf_client, outbound_message(ORG, [note(sobject, {**linked, **fields})]))
    assert response.status_code in (200, 400), response.get_data(as_text=True)[:300]


# -- event ids a backfill can rebuild -----------------------------------------------------


def test_occurrences_are_keyed_on_the_record_version_not_the_notification() -> None:
    edited = NOW - timedelta(hours=2)
    edited_ms = int(edited.timestamp() * 1000)
    lead = {"Id": LEAD, "Status": "Closed - Not Interested", "LeadSource": "Web", "LastModifiedDate": stamp(edited)}
    opp = sf_id("006")
    deal = {"Id": opp, "StageName": "Negotiation", "Pruner_Lead_Id__c": LEAD, "LastModifiedDate": stamp(edited)}
    reopened = {
        "Id": LEAD,
        "Status": "Working - Contacted",
        "Pruner_Reopened__c": True,
        "SystemModstamp": stamp(edited),
    }
    first = mapped(note("Lead", lead), note("Opportunity", deal), note("Lead", reopened))
    assert [e.id for e in first.events] == [
        f"sf:{LEAD}:not_interested:{edited_ms}",
        f"sf:{LEAD}:lead_profile:{edited_ms}",
        f"sf:{opp}:deal_updated:{edited_ms}",
        f"sf:{LEAD}:reopened:{edited_ms}",  # SystemModstamp when the message has no LastModifiedDate
    ]
    # The same version in another notification (re-sent, or read by a backfill): the same events.
    again = mapped(note("Lead", lead), note("Opportunity", deal), note("Lead", reopened))
    assert again.events == first.events
    # A later edit is a new version.
    later = mapped(note("Lead", {**lead, "LastModifiedDate": stamp(NOW)}))
    assert {e.id for e in later.events}.isdisjoint(e.id for e in first.events)


def test_last_modified_date_wins_over_system_modstamp() -> None:
    # SystemModstamp also moves on system updates that change no mapped field: it only stands in.
    fields = {"Id": LEAD, "LeadSource": "Web", "LastModifiedDate": stamp(NOW - timedelta(hours=1))}
    one = mapped(note("Lead", fields)).events[0]
    two = mapped(note("Lead", {**fields, "SystemModstamp": stamp(NOW)})).events[0]
    assert one.id == two.id


def test_a_message_without_the_record_version_keeps_the_notification_id() -> None:
    notification = sf_id("04l")
    result = mapped(note("Lead", {"Id": LEAD, "Status": "Closed - Not Interested"}, notification))
    assert [e.id for e in result.events] == [f"sf:{notification}:not_interested"]
    moved = note("Event", {"Id": sf_id("00U"), "WhoId": LEAD, "Pruner_Rescheduled__c": True}, notification)
    assert mapped(moved).events[1].id == f"sf:{moved[2]['Id']}:meeting_rescheduled:{notification}"
    edited = NOW - timedelta(minutes=5)
    dated = (notification, moved[1], {**moved[2], "LastModifiedDate": stamp(edited)})
    rescheduled = f"sf:{moved[2]['Id']}:meeting_rescheduled:{int(edited.timestamp() * 1000)}"
    assert mapped(dated).events[1].id == rescheduled


class _Reads(dict[str, Any]):
    """Field values that remember which names the mapping asked for."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("sobject", ["Lead", "Task", "Event", "Opportunity", "Individual"])
def test_record_fields_names_every_field_the_mapping_reads(sobject: str) -> None:
    custom = SalesforceMapping.from_dict({"reopened_field": "Reopen__c", "call_type_field": "Dir__c"})
    everything = {"Id": sf_id("00T"), "WhoId": LEAD, "Pruner_Lead_Id__c": LEAD, "IsClosed": "true",
                  "Status": "Working - Contacted", "Reopen__c": "true", "TaskSubtype": "Call",
                  "Pruner_Rescheduled__c": "true", "EndDateTime": stamp(NOW - timedelta(hours=1))}  # fmt: skip
    for subtype in ("Call", "Email"):
        values = _Reads({**everything, "TaskSubtype": subtype})
        map_records([(sobject, values, None)], NOW_MS, custom)
        assert values.asked <= set(record_fields(sobject, custom)), values.asked - set(record_fields(sobject, custom))
