"""Salesforce end to end: SOAP outbound messages into gunicorn, a real RQ worker, callbacks into the fake org."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests

from tests.fakes.salesforce import FakeSalesforce, outbound_message
from tests.integration.support import (
    REDIS_URL,
    base_env,
    drained,
    get_lead,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from webhooks.salesforce import ACK

pytestmark = pytest.mark.integration

ORG = "00D000000000001EAA"
TOKEN = "integration-sf-token"
NOW = datetime.now(tz=UTC).replace(microsecond=0)
Note = tuple[str, str, dict[str, Any]]


def stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class SalesforceSystem:
    def __init__(self, url: str, conn: redis.Redis, fake: FakeSalesforce) -> None:
        self.url, self.conn, self.fake = url, conn, fake

    def note(self, sobject: str, fields: dict[str, Any]) -> Note:
        return self.fake.new_id("Notification"), sobject, fields

    def post(self, *notes: Note, org: str = ORG) -> requests.Response:
        body = outbound_message(org, list(notes))
        return requests.post(
            f"{self.url}/webhooks/salesforce", data=body, headers={"Content-Type": "text/xml"}, timeout=10
        )

    def deliver(self, *notes: Note) -> None:
        response = self.post(*notes)
        assert response.status_code == 200, response.text
        assert response.text == ACK
        wait_until(drained(self.conn))

    def lead(self, lead_id: str) -> dict[str, Any]:
        response = get_lead(self.url, lead_id, "salesforce")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def new_lead(self, **fields: Any) -> str:
        return self.fake.add("Lead", {"Status": "Working - Contacted", "OwnerId": "005000000000001AAA", **fields})


@pytest.fixture(scope="module")
def sf() -> Iterator[SalesforceSystem]:
    fake = FakeSalesforce(token=TOKEN)
    fake_url = fake.start()
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    env = base_env(
        SALESFORCE_ORG_ID=ORG,
        SALESFORCE_INSTANCE_URL=fake_url,
        SALESFORCE_ACCESS_TOKEN=TOKEN,
        PRUNER_DRY_RUN="0",
        PRUNER_SUPPRESSION_KEY="integration-suppression-key",
    )
    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        yield SalesforceSystem(url, conn, fake)
    finally:
        stop(web)
        stop(worker)
        conn.flushdb()
        fake.stop()


def test_each_sobject_changes_the_lead(sf: SalesforceSystem) -> None:
    lead = sf.new_lead()
    hours = [stamp(NOW - timedelta(hours=h)) for h in range(10)]
    sf.deliver(
        sf.note(
            "Lead", {"Id": lead, "LeadSource": "Web", "Industry": "Banking", "Rating": "Hot", "Email": "a@b.example"}
        ),
        sf.note(
            "Task",
            {
                "Id": sf.fake.new_id("Task"),
                "WhoId": lead,
                "TaskSubtype": "Email",
                "Subject": "Intro",
                "CreatedDate": hours[9],
            },
        ),
        sf.note("Task", {"Id": sf.fake.new_id("Task"), "WhoId": lead, "TaskSubtype": "Call", "CreatedDate": hours[8]}),
        sf.note(
            "Task",
            {
                "Id": sf.fake.new_id("Task"),
                "WhoId": lead,
                "TaskSubtype": "Email",
                "Subject": "RE: Intro",
                "CreatedDate": hours[7],
            },
        ),
        sf.note(
            "Task",
            {
                "Id": sf.fake.new_id("Task"),
                "WhoId": lead,
                "TaskSubtype": "Call",
                "CallDisposition": "Connected",
                "CreatedDate": hours[6],
            },
        ),
        sf.note(
            "Event",
            {"Id": sf.fake.new_id("Event"), "WhoId": lead, "CreatedDate": hours[5], "EndDateTime": hours[4]},
        ),
        sf.note(
            "Event",
            {
                "Id": sf.fake.new_id("Event"),
                "WhoId": lead,
                "CreatedDate": hours[3],
                "StartDateTime": stamp(NOW + timedelta(days=3)),
                "EndDateTime": stamp(NOW + timedelta(days=3, hours=1)),
                "Pruner_Rescheduled__c": True,
                "LastModifiedDate": hours[2],
            },
        ),
        sf.note(
            "Opportunity",
            {
                "Id": sf.fake.new_id("Opportunity"),
                "StageName": "Qualification",
                "Amount": "60000",
                "Pruner_Lead_Id__c": lead,
            },
        ),
        sf.note("Account", {"Id": "001000000000001AAA"}),
    )
    doc = sf.lead(lead)
    assert doc["profile"] == {"source": "Web", "segment": "Banking", "priority": "Hot"}
    counters = doc["counters"]
    assert (counters["emails_sent"], counters["replies"]) == (1, 1)
    assert (counters["call_attempts"], counters["connected_calls"]) == (1, 1)
    assert (counters["meetings_booked"], counters["meetings_held"], counters["meetings_rescheduled"]) == (2, 1, 1)
    assert doc["events"] == 10  # profile, 4 tasks, booked+held, booked+rescheduled, deal
    assert doc["state"] == "ACTIVE"


def test_a_duplicate_notification_is_counted_once(sf: SalesforceSystem) -> None:
    lead = sf.new_lead()
    call = sf.note("Task", {"Id": sf.fake.new_id("Task"), "WhoId": lead, "TaskSubtype": "Call"})
    sf.deliver(call)
    sf.deliver(call)
    # Salesforce also re-sends the same Task under a new notification id after an edit.
    sf.deliver((sf.fake.new_id("Notification"), call[1], {**call[2], "Description": "edited"}))
    doc = sf.lead(lead)
    assert doc["events"] == 1 and doc["counters"]["call_attempts"] == 1


def test_two_not_interested_calls_mark_the_lead_lost_in_salesforce(sf: SalesforceSystem) -> None:
    lead = sf.new_lead()
    opportunity = sf.fake.add("Opportunity", {"StageName": "Prospecting", "Pruner_Lead_Id__c": lead})

    def no(hours_ago: int) -> Note:
        fields = {
            "Id": sf.fake.new_id("Task"),
            "WhoId": lead,
            "TaskSubtype": "Call",
            "CallDisposition": "Not interested",
            "CreatedDate": stamp(NOW - timedelta(hours=hours_ago)),
        }
        return sf.note("Task", fields)

    sf.deliver(no(5))
    assert sf.lead(lead)["state"] == "ACTIVE"
    sf.deliver(no(2))
    doc = sf.lead(lead)
    assert (doc["state"], doc["loss_reason"]) == ("LOST", "not_interested")
    wait_until(lambda: (sf.fake.get("Lead", lead) or {}).get("Status") == "Closed - Not Converted", 20)
    record = sf.fake.get("Lead", lead)
    assert record is not None and record["Pruner_Lost_Reason__c"] == "not_interested"
    wait_until(lambda: (sf.fake.get("Opportunity", opportunity) or {}).get("StageName") == "Closed Lost", 20)
    # A rep reopens the lead by hand; the flow stamps the marker.
    reopened = {
        "Id": lead,
        "Status": "Working - Contacted",
        "Pruner_Reopened__c": stamp(NOW - timedelta(minutes=30)),
    }
    sf.deliver(sf.note("Lead", reopened))
    assert sf.lead(lead)["state"] == "ACTIVE"


def test_meetings_pushed_back_twice_ask_the_rep_for_a_break_up(sf: SalesforceSystem) -> None:
    lead = sf.new_lead()
    meeting = sf.fake.new_id("Event")

    def moved(days: int, hours_ago: int) -> Note:
        fields = {
            "Id": meeting,
            "WhoId": lead,
            "CreatedDate": stamp(NOW - timedelta(days=2)),
            "StartDateTime": stamp(NOW + timedelta(days=days)),
            "EndDateTime": stamp(NOW + timedelta(days=days, hours=1)),
            "Pruner_Rescheduled__c": True,
            "Pruner_First_Meeting__c": False,
            "LastModifiedDate": stamp(NOW - timedelta(hours=hours_ago)),
        }
        return sf.note("Event", fields)

    sf.deliver(moved(3, 5))
    sf.deliver(moved(6, 2))
    doc = sf.lead(lead)
    assert (doc["state"], doc["decisions"][-1]["rule"]) == ("BREAKUP_DUE", "pushed_back")
    wait_until(lambda: len(sf.fake.find("Task", WhoId=lead)) == 1, 20)
    [task] = sf.fake.find("Task", WhoId=lead)
    # The rule and its count, read from the decision, in the rep's words.
    assert task["Subject"].startswith("Pruner: Send a polite break-up message: follow-up meetings pushed back 2 times")
    assert task["Status"] == "Not Started" and task["OwnerId"] == "005000000000001AAA"


def test_do_not_call_suppresses_the_lead_in_salesforce(sf: SalesforceSystem) -> None:
    individual = sf.fake.add("Individual", {"HasOptedOutSolicit": False})
    lead = sf.new_lead(IndividualId=individual)
    sf.deliver(sf.note("Lead", {"Id": lead, "DoNotCall": True, "LastModifiedDate": stamp(NOW - timedelta(minutes=5))}))
    doc = sf.lead(lead)
    assert doc["state"] == "SUPPRESSED"
    # A phone-only objection: do-not-call, and email subscriptions are left as they were, and so
    # is the Individual's "don't market on any channel" (set only for an objection to every channel).
    wait_until(lambda: (sf.fake.get("Lead", lead) or {}).get("DoNotCall") is True, 20)
    record = sf.fake.get("Lead", lead)
    assert record is not None and record.get("HasOptedOutOfEmail") is not True
    assert (sf.fake.get("Individual", individual) or {}).get("HasOptedOutSolicit") is False
    # Then an objection to email as well: now every channel, and the Individual opts out of solicitation.
    sf.deliver(
        sf.note(
            "Lead",
            {
                "Id": lead,
                "DoNotCall": True,
                "HasOptedOutOfEmail": True,
                "LastModifiedDate": stamp(NOW - timedelta(minutes=2)),
            },
        )
    )
    wait_until(lambda: (sf.fake.get("Individual", individual) or {}).get("HasOptedOutSolicit") is True, 20)


def test_individual_opt_out_and_forget(sf: SalesforceSystem) -> None:
    opted_out, forgotten = sf.new_lead(), sf.new_lead()
    sf.deliver(
        sf.note("Task", {"Id": sf.fake.new_id("Task"), "WhoId": forgotten, "TaskSubtype": "Call"}),
        sf.note(
            "Individual",
            {"Id": sf.fake.new_id("Individual"), "HasOptedOutSolicit": True, "Pruner_Lead_Id__c": opted_out},
        ),
    )
    assert sf.lead(opted_out)["state"] == "SUPPRESSED"
    sf.deliver(
        sf.note(
            "Individual", {"Id": sf.fake.new_id("Individual"), "ShouldForget": True, "Pruner_Lead_Id__c": forgotten}
        )
    )
    assert sf.lead(forgotten) == {"crm": "salesforce", "lead_id": forgotten, "state": "SUPPRESSED", "erased": True}


def test_hostile_or_foreign_messages_are_refused_over_http(sf: SalesforceSystem) -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        b'<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>&xxe;</OrganizationId>'
        b"</notifications></soapenv:Body></soapenv:Envelope>"
    )
    response = requests.post(
        f"{sf.url}/webhooks/salesforce", data=xxe, headers={"Content-Type": "text/xml"}, timeout=10
    )
    assert response.status_code == 400
    assert "soapenv:Fault" in response.text and "root:" not in response.text and "passwd" not in response.text
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY a{i} "{("&a" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
        )
        + b"]><l>&a9;</l>"
    )
    response = requests.post(
        f"{sf.url}/webhooks/salesforce", data=laughs, headers={"Content-Type": "text/xml"}, timeout=10
    )
    assert response.status_code == 400 and response.elapsed.total_seconds() < 2
    lead = sf.new_lead()
    foreign = sf.post(sf.note("Lead", {"Id": lead, "DoNotCall": True}), org="00D000000000002EAA")
    assert foreign.status_code == 403 and "soapenv:Fault" in foreign.text
    response = get_lead(sf.url, lead, "salesforce")
    assert response.status_code == 404


@pytest.mark.parametrize("order", ["as_edited", "correction_first"])
def test_an_edited_call_counts_once_as_connected_in_either_arrival_order(sf: SalesforceSystem, order: str) -> None:
    # A rep logs a call without a disposition, then edits the Task: Connected. Salesforce sends a
    # notification for each save, with the record's values at that save; the two may arrive either way.
    lead = sf.new_lead()
    task = sf.fake.new_id("Task")
    base = {"Id": task, "WhoId": lead, "TaskSubtype": "Call", "CreatedDate": stamp(NOW - timedelta(hours=3))}
    logged = sf.note("Task", {**base, "SystemModstamp": stamp(NOW - timedelta(hours=3))})
    edited = sf.note(
        "Task", {**base, "CallDisposition": "Connected", "SystemModstamp": stamp(NOW - timedelta(hours=1))}
    )
    for note in [logged, edited] if order == "as_edited" else [edited, logged]:
        sf.deliver(note)
    counters = sf.lead(lead)["counters"]
    assert (counters["connected_calls"], counters["call_attempts"], counters["outbound_touches"]) == (1, 0, 1)
    assert sf.lead(lead)["events"] == 2  # both versions kept, only the latest counted
