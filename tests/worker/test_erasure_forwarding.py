"""PRUNER_FORWARD_ERASURE: an erasure received elsewhere is carried out in the lead's CRM, exactly once.

Real Redis (DB 12 of the test Redis), RQ jobs run by an in-process `SimpleWorker` (the
batch, then the drain it enqueues), and the fake CRMs over real HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from rules.events import Crm, Event, EventType
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.salesforce import FakeSalesforce
from worker import jobs
from worker.actions import FORWARDED_KEY, dead_key, done_key
from worker.config import Config
from worker.decide import Decider
from worker.errors import ConfigError
from worker.keys import outbox_key
from worker.policyfile import default_policy
from worker.queues import enqueue_events, make_queue
from worker.store import LeadStore

KEY = "forwarding-suppression-key"
T0 = datetime.now(tz=UTC) - timedelta(days=2)
CONTACT = "7730001"


@pytest.fixture
def hubspot(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHubSpot]:
    with FakeHubSpotServer() as server:
        monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", TOKEN)
        monkeypatch.setenv("HUBSPOT_API_BASE", server.url)
        monkeypatch.setenv("PRUNER_SUPPRESSION_KEY", KEY)
        monkeypatch.setenv("PRUNER_FORWARD_ERASURE", "1")
        yield server.fake


@pytest.fixture
def salesforce(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSalesforce]:
    fake = FakeSalesforce(token="sf-token")
    monkeypatch.setenv("SALESFORCE_INSTANCE_URL", fake.start())
    monkeypatch.setenv("SALESFORCE_ACCESS_TOKEN", "sf-token")
    monkeypatch.setenv("PRUNER_SUPPRESSION_KEY", KEY)
    monkeypatch.setenv("PRUNER_FORWARD_ERASURE", "1")
    yield fake
    fake.stop()


def ev(n: int, etype: str, lead: str = CONTACT, crm: Crm = Crm.HUBSPOT) -> Event:
    at = int((T0 + timedelta(hours=n)).timestamp() * 1000)
    return Event(f"{lead}-{etype}-{n}", EventType(etype), crm, lead, at, {})


def run(conn: redis.Redis, events: list[Event], source: str) -> None:
    """Queue the batch as a webhook would, and work the queue dry: the batch, then any drain it asked for."""
    queue = make_queue(conn)
    enqueue_events(queue, [e.to_wire() for e in events], source=source)
    SimpleWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, with_scheduler=False)
    assert queue.failed_job_registry.count == 0


def drain_again(conn: redis.Redis, crm: str) -> None:
    queue = make_queue(conn)
    queue.enqueue("worker.jobs.drain_outbox", args=(crm,), result_ttl=0)
    SimpleWorker([queue], connection=conn, serializer=JSONSerializer).work(burst=True, with_scheduler=False)
    assert queue.failed_job_registry.count == 0


def gdpr_deletes(fake: FakeHubSpot) -> list[Any]:
    return [c["body"] for c in fake.api_calls("POST", "/gdpr-delete")]


def test_a_canonical_erasure_is_gdpr_deleted_in_hubspot_once(conn: redis.Redis, hubspot: FakeHubSpot) -> None:
    hubspot.add_contact(CONTACT, "ada@example.com")
    run(conn, [ev(1, "email_sent"), ev(2, "erasure_requested")], source="events")
    assert gdpr_deletes(hubspot) == [{"objectId": CONTACT}]
    assert hubspot.state()["gdpr_deleted"] == [CONTACT]
    # Delivered again, asked again under another event id, drained again: nothing more reaches HubSpot.
    run(conn, [ev(2, "erasure_requested")], source="events")
    run(conn, [ev(3, "erasure_requested")], source="events")
    drain_again(conn, "hubspot")
    assert len(gdpr_deletes(hubspot)) == 1
    # And Pruner keeps no trace of the id: outbox, done and dead records are empty of it.
    assert conn.llen(outbox_key("hubspot")) == 0
    assert not conn.smembers(done_key("hubspot")) and not conn.lrange(dead_key("hubspot"), 0, -1)
    assert conn.scard(FORWARDED_KEY) == 1  # a keyed hash, like the suppression list's
    assert not [k for k in conn.scan_iter("*") if CONTACT.encode() in k]


def test_a_lost_answer_to_the_delete_is_not_a_second_delete(conn: redis.Redis, hubspot: FakeHubSpot) -> None:
    hubspot.add_contact(CONTACT)
    # HubSpot deletes, then the answer is lost: the retry finds the contact gone (404), which is done.
    hubspot.configure(script=[{"path": "/crm/v3/objects/contacts/gdpr-delete", "after_write": True, "status": 502}])
    run(conn, [ev(2, "erasure_requested")], source="events")
    assert hubspot.state()["gdpr_deleted"] == [CONTACT]
    assert [c["status"] for c in hubspot.api_calls("POST", "/gdpr-delete")] == [502, 404]
    assert conn.llen(outbox_key("hubspot")) == 0


def test_a_job_retried_after_the_erasure_was_applied_still_forwards_it(conn: redis.Redis, hubspot: FakeHubSpot) -> None:
    hubspot.add_contact(CONTACT)
    erasure = ev(2, "erasure_requested")
    # The first attempt applied the erasure and died before forwarding it...
    decide = Decider(default_policy(), erasure.occurred_ms + 1, suppression_key=KEY.encode())
    assert LeadStore(conn, KEY.encode()).apply_batch([erasure], decide).erased == [("hubspot", CONTACT)]
    # ...RQ's retry finds the event a duplicate, and forwards all the same; a second retry does not.
    run(conn, [erasure], source="events")
    run(conn, [erasure], source="events")
    assert hubspot.state()["gdpr_deleted"] == [CONTACT]


def test_hubspots_own_privacy_deletion_is_not_sent_back(conn: redis.Redis, hubspot: FakeHubSpot) -> None:
    hubspot.add_contact(CONTACT)
    run(conn, [ev(1, "email_sent"), ev(2, "erasure_requested")], source="hubspot")
    assert LeadStore(conn).history("hubspot", CONTACT) is None  # erased in Pruner
    assert gdpr_deletes(hubspot) == [] and hubspot.api_calls() == []


def test_forwarding_is_off_unless_asked_for_and_in_a_dry_run(
    conn: redis.Redis, hubspot: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    hubspot.add_contact(CONTACT)
    hubspot.add_contact("7730002")
    monkeypatch.delenv("PRUNER_FORWARD_ERASURE")
    run(conn, [ev(2, "erasure_requested")], source="events")
    jobs._config.cache_clear()
    monkeypatch.setenv("PRUNER_FORWARD_ERASURE", "1")
    monkeypatch.setenv("PRUNER_DRY_RUN", "1")
    run(conn, [ev(2, "erasure_requested", lead="7730002")], source="events")
    assert hubspot.api_calls() == [] and conn.scard(FORWARDED_KEY) == 0


def test_a_canonical_erasure_sets_should_forget_on_the_salesforce_individual_once(
    conn: redis.Redis, salesforce: FakeSalesforce
) -> None:
    individual = salesforce.add("Individual", {"ShouldForget": False})
    lead = salesforce.add("Lead", {"Status": "Open", "OwnerId": "005000000000001AAA", "IndividualId": individual})
    lonely = salesforce.add("Lead", {"Status": "Open", "OwnerId": "005000000000001AAA"})  # no Individual
    erasures = [ev(2, "erasure_requested", lead, Crm.SALESFORCE), ev(2, "erasure_requested", lonely, Crm.SALESFORCE)]
    run(conn, erasures, source="events")
    assert (salesforce.get("Individual", individual) or {})["ShouldForget"] is True
    patches = [c for c in salesforce.api_calls() if c["method"] == "PATCH"]
    assert [(c["path"], c["json"]) for c in patches] == [(f"sobjects/Individual/{individual}", {"ShouldForget": True})]
    run(conn, erasures, source="events")
    drain_again(conn, "salesforce")
    assert len([c for c in salesforce.api_calls() if c["method"] == "PATCH"]) == 1
    assert conn.llen(outbox_key("salesforce")) == 0 and not conn.lrange(dead_key("salesforce"), 0, -1)


def test_salesforces_own_should_forget_is_not_sent_back(conn: redis.Redis, salesforce: FakeSalesforce) -> None:
    individual = salesforce.add("Individual", {"ShouldForget": True})
    lead = salesforce.add("Lead", {"Status": "Open", "IndividualId": individual})
    run(conn, [ev(2, "erasure_requested", lead, Crm.SALESFORCE)], source="salesforce")
    assert salesforce.api_calls() == []
    assert json.loads(conn.lindex("pruner:erasures", 0) or b"{}")["source"] == "salesforce"


def test_the_setting_is_a_flag_read_with_the_configuration() -> None:
    assert Config.from_env({}).forward_erasure is False
    assert Config.from_env({"PRUNER_FORWARD_ERASURE": "1"}).enabled()["erasure forwarding to the CRM"] is True
    with pytest.raises(ConfigError, match="PRUNER_FORWARD_ERASURE must be 1 or 0"):
        Config.from_env({"PRUNER_FORWARD_ERASURE": "sometimes"})
