"""Tasks reach the rep: owners and texts, over real HTTP against both fake CRMs.

The same semantics on both sides: the record's (user) owner gets the task; without one,
the configured fallback owner; without a fallback, the CRM's default (unassigned in
HubSpot, the API user in Salesforce) and a warning naming ids only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.salesforce import API_USER_ID, FakeSalesforce
from worker.config import Config
from worker.crm.hubspot import HubSpotExecutor
from worker.crm.hubspot_client import HubSpotClient
from worker.crm.salesforce import SalesforceExecutor
from worker.crm.salesforce_client import SalesforceClient
from worker.crm.settings import HubSpotSettings, SalesforceSettings
from worker.errors import ConfigError
from worker.keys import state_key
from worker.tasktexts import TaskTexts

NOW_S = 1_790_000_000.0
REP, FALLBACK = "111", "999"
SF_REP, SF_FALLBACK, SF_QUEUE = "005000000000001AAA", "005000000000009AAA", "00G000000000001AAA"
# What the unresponsive rule compared when it fired (as Decision.inputs): what the task should say.
UNRESPONSIVE = {"follow_ups_since_reply": 3, "threshold": 3, "outbound_touches": 14}


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpotServer]:
    with FakeHubSpotServer() as running:
        running.fake.configure(owners=[REP, FALLBACK])  # HubSpot refuses an owner id it does not know
        yield running


@pytest.fixture
def salesforce() -> Iterator[tuple[FakeSalesforce, str]]:
    fake = FakeSalesforce(token="t")
    url = fake.start()
    yield fake, url
    fake.stop()


def action(crm: str, lead: str, kind: str = "breakup_task", rule: str = "unresponsive") -> dict[str, Any]:
    return {
        "id": f"{crm}:{lead}:{rule}:BREAKUP_DUE@1#1",
        "kind": kind,
        "crm": crm,
        "lead_id": lead,
        "rule": rule,
        "reason": "no_response",
        "at": "2026-09-21T10:00:00Z",
        "dry_run": False,
    }


def remember_decision(conn: fakeredis.FakeRedis, a: dict[str, Any]) -> None:
    """The lead's state record, as the store keeps it: the decision behind the action, with its inputs."""
    decision = {"rule": a["rule"], "from": "ACTIVE", "to": "BREAKUP_DUE", "reason": a["reason"], "at": a["at"],
                "inputs": UNRESPONSIVE}  # fmt: skip
    conn.set(state_key(a["crm"], a["lead_id"]), json.dumps({"state": "BREAKUP_DUE", "decisions": [decision]}))


def hubspot_executor(server: FakeHubSpotServer, conn: fakeredis.FakeRedis, fallback: str | None) -> HubSpotExecutor:
    client = HubSpotClient(server.url, TOKEN, None, backoff_base_s=0.01, backoff_cap_s=0.05, search_delay_s=0.0)
    settings = HubSpotSettings(fallback_owner_id=fallback)
    return HubSpotExecutor(client, conn, settings, clock=lambda: NOW_S, texts=TaskTexts(conn))


def sf_executor(url: str, conn: fakeredis.FakeRedis, fallback: str | None) -> SalesforceExecutor:
    settings = SalesforceSettings(fallback_owner_id=fallback)
    client = SalesforceClient(url, "t", "59.0", None, settings, sleep=lambda _s: None)
    return SalesforceExecutor(client, settings, texts=TaskTexts(conn))


# -- HubSpot ---------------------------------------------------------------------------------


def test_a_hubspot_task_goes_to_its_contacts_owner(hubspot: FakeHubSpotServer, fake_redis: fakeredis.FakeRedis) -> None:
    fake: FakeHubSpot = hubspot.fake
    fake.add_contact("201", "ann@example.com", hubspot_owner_id=REP)
    a = action("hubspot", "201")
    remember_decision(fake_redis, a)
    with hubspot_executor(hubspot, fake_redis, FALLBACK) as ex:
        assert all(o.ok for o in ex.execute([a]))
    (task,) = fake.tasks_for("201")
    assert task["hubspot_owner_id"] == REP
    (read,) = fake.api_calls("POST", "/crm/v3/objects/contacts/batch/read")
    assert read["body"]["properties"] == ["hubspot_owner_id"]  # the owner, read with the contact; no email
    assert (
        task["hs_task_subject"] == "Send a polite break-up message: 3 follow-ups since their last reply, none answered"
    )
    assert "unresponsive rule fired" in task["hs_task_body"]


def test_a_contact_without_owner_gets_the_fallback_owner_and_a_log_line_with_ids_only(
    hubspot: FakeHubSpotServer, fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = hubspot.fake
    fake.add_contact("202", "bob@example.com")
    fake.add_contact("203", "cy@example.com", hubspot_owner_id=REP)
    caplog.set_level(logging.INFO, logger="worker.tasktexts")
    with hubspot_executor(hubspot, fake_redis, FALLBACK) as ex:
        assert all(o.ok for o in ex.execute([action("hubspot", "202"), action("hubspot", "203")]))
    assert [t["hubspot_owner_id"] for t in fake.tasks_for("202")] == [FALLBACK]
    assert [t["hubspot_owner_id"] for t in fake.tasks_for("203")] == [REP]
    said = [r.getMessage() for r in caplog.records if "no owner" in r.getMessage()]
    assert said == [f"hubspot contact 202 has no owner: its task goes to the fallback owner {FALLBACK}"]
    assert "@" not in caplog.text


def test_without_a_fallback_the_task_is_unassigned_and_a_warning_says_so(
    hubspot: FakeHubSpotServer, fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    hubspot.fake.add_contact("204", "dee@example.com")
    with hubspot_executor(hubspot, fake_redis, None) as ex:
        assert all(o.ok for o in ex.execute([action("hubspot", "204", "reengage_task", "reengage")]))
    (task,) = hubspot.fake.tasks_for("204")
    assert "hubspot_owner_id" not in task
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "contact 204 has no owner" in warning.getMessage() and "HUBSPOT_FALLBACK_OWNER_ID" in warning.getMessage()
    assert "@" not in caplog.text


# -- Salesforce ------------------------------------------------------------------------------


def test_salesforce_tasks_follow_the_same_owner_rules(
    salesforce: tuple[FakeSalesforce, str], fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = salesforce
    owned = fake.add("Lead", {"Status": "Open", "OwnerId": SF_REP, "Email": "ann@example.com"})
    queued = fake.add("Lead", {"Status": "Open", "OwnerId": SF_QUEUE, "Email": "bob@example.com"})
    a = action("salesforce", owned)
    remember_decision(fake_redis, a)
    caplog.set_level(logging.INFO, logger="worker.tasktexts")
    assert all(o.ok for o in sf_executor(url, fake_redis, SF_FALLBACK).execute([a, action("salesforce", queued)]))
    tasks = {t["WhoId"]: t for t in fake.find("Task")}
    assert (tasks[owned]["OwnerId"], tasks[queued]["OwnerId"]) == (SF_REP, SF_FALLBACK)
    # The same words as on HubSpot, from the same decision.
    assert tasks[owned]["Subject"].startswith(
        "Pruner: Send a polite break-up message: 3 follow-ups since their last reply, none answered [pruner-ref "
    )
    said = [r.getMessage() for r in caplog.records if "no owner" in r.getMessage()]
    assert said == [f"salesforce lead {queued} has no owner: its task goes to the fallback owner {SF_FALLBACK}"]
    assert "@" not in caplog.text


def test_salesforce_without_a_fallback_leaves_the_task_to_the_api_user(
    salesforce: tuple[FakeSalesforce, str], fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = salesforce
    queued = fake.add("Lead", {"Status": "Open", "OwnerId": SF_QUEUE})
    assert all(o.ok for o in sf_executor(url, fake_redis, None).execute([action("salesforce", queued)]))
    (task,) = fake.find("Task")
    assert task["OwnerId"] == API_USER_ID
    assert "OwnerId" not in fake.api_calls("POST", "sobjects/Task")[0]["json"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"lead {queued} has no owner" in warning.getMessage() and "goes to the API user" in warning.getMessage()
    assert "SALESFORCE_FALLBACK_OWNER_ID" in warning.getMessage()


# -- configuration ---------------------------------------------------------------------------


def test_fallback_owners_are_read_and_checked_with_the_configuration() -> None:
    config = Config.from_env({"HUBSPOT_FALLBACK_OWNER_ID": FALLBACK, "SALESFORCE_FALLBACK_OWNER_ID": SF_FALLBACK})
    assert (config.hubspot.fallback_owner_id, config.salesforce.fallback_owner_id) == (FALLBACK, SF_FALLBACK)
    assert Config.from_env({}).hubspot.fallback_owner_id is None
    with pytest.raises(ConfigError, match="HUBSPOT_FALLBACK_OWNER_ID must be a HubSpot owner id"):
        Config.from_env({"HUBSPOT_FALLBACK_OWNER_ID": "rep@example.com"})
    with pytest.raises(ConfigError, match="SALESFORCE_FALLBACK_OWNER_ID must be a user id"):
        Config.from_env({"SALESFORCE_FALLBACK_OWNER_ID": SF_QUEUE})
