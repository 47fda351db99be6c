"""The Salesforce executor against the fake Salesforce in a thread: coalescing, retries, idempotency."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from tests.fakes.salesforce import API_USER_ID, FakeSalesforce
from worker.config import Config
from worker.crm.base import CrmError, TransientCrmError
from worker.crm.ratelimit import RateLimiter
from worker.crm.salesforce import RATE_KEY, SalesforceExecutor, build_executor, task_ref
from worker.crm.salesforce_client import SalesforceClient
from worker.crm.settings import SalesforceAuthError, SalesforceSettings
from worker.errors import ConfigError

TOKEN = "unit-test-sf-token"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeSalesforce, str]]:
    fake = FakeSalesforce(token=TOKEN)
    url = fake.start()
    yield fake, url
    fake.stop()


@pytest.fixture
def fake(server: tuple[FakeSalesforce, str]) -> FakeSalesforce:
    server[0].reset()
    return server[0]


@pytest.fixture
def url(server: tuple[FakeSalesforce, str]) -> str:
    return server[1]


class Sleeps(list[float]):
    """Records the backoff instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def executor(url: str, sleeps: Sleeps, token: str = TOKEN, **settings: Any) -> SalesforceExecutor:
    config = SalesforceSettings(**settings)
    return SalesforceExecutor(SalesforceClient(url, token, "59.0", None, config, sleep=sleeps), config)


def action(kind: str, lead_id: str, reason: str | None = "not_interested", n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"salesforce:{lead_id}:rule:{kind}:{n}",
        "kind": kind,
        "crm": "salesforce",
        "lead_id": lead_id,
        "rule": "repeated_no",
        "reason": reason,
        "at": "2026-11-20T10:00:00Z",
        "dry_run": False,
        **extra,
    }


def lead(fake: FakeSalesforce, **fields: Any) -> str:
    return fake.add("Lead", {"Status": "Working - Contacted", "OwnerId": "005000000000001AAA", **fields})


def test_build_executor_fails_loudly_without_url_or_token(fake_redis: fakeredis.FakeRedis) -> None:
    with pytest.raises(ConfigError, match="SALESFORCE_INSTANCE_URL"):
        build_executor(Config.from_env({"SALESFORCE_ACCESS_TOKEN": TOKEN}), fake_redis)
    with pytest.raises(ConfigError, match="SALESFORCE_ACCESS_TOKEN"):
        build_executor(Config.from_env({"SALESFORCE_INSTANCE_URL": "https://x.my.salesforce.com"}), fake_redis)
    with pytest.raises(ConfigError, match="https://"):
        build_executor(
            Config.from_env({"SALESFORCE_INSTANCE_URL": "ftp://x", "SALESFORCE_ACCESS_TOKEN": TOKEN}), fake_redis
        )


def test_build_executor_over_http_uses_the_shared_rate_budget(
    fake: FakeSalesforce, url: str, fake_redis: fakeredis.FakeRedis
) -> None:
    config = Config.from_env(
        {"SALESFORCE_INSTANCE_URL": url + "/", "SALESFORCE_ACCESS_TOKEN": TOKEN, "SALESFORCE_API_VERSION": "58.0"}
    )
    ex = build_executor(config, fake_redis)
    assert ex.crm == "salesforce"
    lead_id = lead(fake)
    [outcome] = ex.execute([action("mark_lost", lead_id)])
    assert outcome.ok, outcome.detail
    assert fake.get("Lead", lead_id)["Status"] == "Closed - Not Converted"  # type: ignore[index]
    assert fake_redis.exists(RATE_KEY)
    assert {c["path"].split("/")[0] for c in fake.calls} <= {"query", "sobjects", "composite"}


def test_settings_from_env() -> None:
    settings = SalesforceSettings.from_env(
        {"SALESFORCE_RATE_LIMIT": "10/2", "SALESFORCE_LOST_STATUS": "Disqualified", "SALESFORCE_LOST_STAGE": "Lost"}
    )
    assert (settings.rate_limit, settings.rate_window_s, settings.lost_status, settings.lost_stage) == (
        10,
        2.0,
        "Disqualified",
        "Lost",
    )
    with pytest.raises(ConfigError, match="SALESFORCE_RATE_LIMIT"):
        SalesforceSettings.from_env({"SALESFORCE_RATE_LIMIT": "fast"})
    with pytest.raises(ConfigError, match="opportunity_lead_field"):
        SalesforceSettings.from_env({"SALESFORCE_OPPORTUNITY_LEAD_FIELD": "x'; DROP"})


def test_mark_lost_sets_status_reason_and_closes_open_opportunities(
    fake: FakeSalesforce, url: str, sleeps: Sleeps
) -> None:
    lead_id = lead(fake)
    open_opp = fake.add("Opportunity", {"StageName": "Negotiation", "Pruner_Lead_Id__c": lead_id})
    open_15 = fake.add("Opportunity", {"StageName": "Prospecting", "Pruner_Lead_Id__c": lead_id[:15]})
    won = fake.add("Opportunity", {"StageName": "Closed Won", "Pruner_Lead_Id__c": lead_id})
    other = fake.add("Opportunity", {"StageName": "Prospecting", "Pruner_Lead_Id__c": lead(fake)})
    [outcome] = executor(url, sleeps).execute([action("mark_lost", lead_id, reason="budget")])
    assert outcome.ok and outcome.action_id == f"salesforce:{lead_id}:rule:mark_lost:1"
    record = fake.get("Lead", lead_id)
    assert record is not None
    assert (record["Status"], record["Pruner_Lost_Reason__c"]) == ("Closed - Not Converted", "budget")
    assert fake.get("Opportunity", open_opp)["StageName"] == "Closed Lost"  # type: ignore[index]
    assert fake.get("Opportunity", open_15)["StageName"] == "Closed Lost"  # type: ignore[index]
    assert fake.get("Opportunity", won)["StageName"] == "Closed Won"  # type: ignore[index]
    assert fake.get("Opportunity", other)["StageName"] == "Prospecting"  # type: ignore[index]
    [soql] = [c["query"] for c in fake.api_calls("GET", "query")]
    assert "IsClosed = false" in soql and "Pruner_Lead_Id__c IN" in soql
    assert len(fake.api_calls("PATCH", "composite/sobjects")) == 1


def test_one_pending_record_is_a_single_patch(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    [outcome] = executor(url, sleeps).execute([action("mark_lost", lead_id)])
    assert outcome.ok
    assert [c["path"] for c in fake.api_calls("PATCH")] == [f"sobjects/Lead/{lead_id}"]


def test_thirty_lost_leads_are_coalesced(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    leads = [lead(fake) for _ in range(30)]
    for lead_id in leads[:10]:
        fake.add("Opportunity", {"StageName": "Prospecting", "Pruner_Lead_Id__c": lead_id})
    outcomes = executor(url, sleeps).execute([action("mark_lost", lead_id) for lead_id in leads])
    assert all(o.ok for o in outcomes) and len(outcomes) == 30
    assert len(fake.calls) <= 3  # one opportunity query, one composite PATCH (40 records)
    [batch] = fake.api_calls("PATCH", "composite/sobjects")
    assert batch["json"]["allOrNone"] is False
    assert len(batch["json"]["records"]) == 40
    assert all(fake.get("Lead", lead_id)["Status"] == "Closed - Not Converted" for lead_id in leads)  # type: ignore[index]
    assert {o["StageName"] for o in fake.find("Opportunity")} == {"Closed Lost"}


def test_more_than_200_records_are_split(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    leads = [lead(fake) for _ in range(250)]
    outcomes = executor(url, sleeps).execute([action("mark_lost", lead_id) for lead_id in leads])
    assert all(o.ok for o in outcomes)
    sizes = [len(c["json"]["records"]) for c in fake.api_calls("PATCH", "composite/sobjects")]
    assert sizes == [200, 50]


def test_a_refused_record_is_retried_alone_once(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    flaky, broken, fine = lead(fake), lead(fake), lead(fake)
    fake.configure(
        fail_records={
            flaky: {"code": "UNABLE_TO_LOCK_ROW", "times": 1},
            broken: {"code": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "times": -1},
        }
    )
    outcomes = {
        o.action_id: o for o in executor(url, sleeps).execute([action("mark_lost", x) for x in (flaky, broken, fine)])
    }
    assert outcomes[action("mark_lost", flaky)["id"]].ok
    assert outcomes[action("mark_lost", fine)["id"]].ok
    failed = outcomes[action("mark_lost", broken)["id"]]
    assert (
        not failed.ok and "FIELD_CUSTOM_VALIDATION_EXCEPTION" in failed.detail and "Lead update failed" in failed.detail
    )
    singles = [c["path"] for c in fake.api_calls("PATCH", "sobjects/")]
    assert sorted(singles) == sorted([f"sobjects/Lead/{flaky}", f"sobjects/Lead/{broken}"])
    assert fake.get("Lead", fine)["Status"] == "Closed - Not Converted"  # type: ignore[index]


def test_deleted_lead_is_a_failed_outcome_not_an_exception(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    gone, here = "00Q000000000999AAA", lead(fake)
    outcomes = executor(url, sleeps).execute([action("mark_lost", gone), action("mark_lost", here)])
    assert [o.ok for o in outcomes] == [False, True]
    assert "ENTITY_IS_DELETED" in outcomes[0].detail


def test_request_limit_exceeded_backs_off_then_succeeds(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    fake.configure(limit_next=2, retry_after=3)
    [outcome] = executor(url, sleeps).execute([action("mark_lost", lead_id)])
    assert outcome.ok
    # Retry-After honoured, with the shared policy's little jitter (worker/crm/http.py backoff_s)
    assert len(sleeps) == 2 and all(3.0 <= wait <= 3.35 for wait in sleeps)
    assert [c["status"] for c in fake.calls] == [403, 403, 200, 204]  # query twice refused, then query and patch


class BlockRecorder(RateLimiter):
    """The shared limiter, recording how long it is told to hold every worker back (without holding them)."""

    def __init__(self, connection: fakeredis.FakeRedis) -> None:
        super().__init__(connection, 25, 1.0, key=RATE_KEY, margin_s=0)
        self.blocks: list[float] = []

    def block(self, seconds: float) -> None:
        self.blocks.append(seconds)


@pytest.mark.parametrize(
    ("fault", "blocks"),
    [
        ({"error_next": 2, "error_status": 429, "retry_after": 3}, [3.0, 3.0]),
        ({"error_next": 2, "error_status": 429}, [0.5, 0.5]),
        ({"limit_next": 2}, [0.5, 0.5]),
        ({"error_next": 2, "error_status": 503, "retry_after": 3}, []),
        ({"error_next": 2, "error_status": 500}, []),
    ],
    ids=["429-retry-after", "429-bare", "request-limit-exceeded", "503-retry-after", "500-bare"],
)
def test_a_429_holds_back_every_worker_a_server_error_only_this_one(
    fake: FakeSalesforce,
    url: str,
    sleeps: Sleeps,
    fake_redis: fakeredis.FakeRedis,
    fault: dict[str, Any],
    blocks: list[float],
) -> None:
    lead_id = lead(fake)
    limiter = BlockRecorder(fake_redis)
    config = SalesforceSettings(backoff_initial_s=0.5)
    ex = SalesforceExecutor(SalesforceClient(url, TOKEN, "59.0", limiter, config, sleep=sleeps), config)
    fake.configure(**fault)
    [outcome] = ex.execute([action("mark_lost", lead_id)])
    assert outcome.ok
    assert limiter.blocks == blocks  # the org's budget is shared by every worker
    if "retry_after" in fault:
        assert len(sleeps) == 2 and all(3.0 <= wait <= 3.35 for wait in sleeps)


@pytest.mark.parametrize(
    "fault",
    [{"error_next": 2, "error_status": 429}, {"limit_next": 2}, {"error_next": 2, "error_status": 503}],
    ids=["429", "request-limit-exceeded", "503"],
)
def test_a_retry_after_beyond_the_cap_is_left_to_rq_and_holds_back_every_worker(
    fake: FakeSalesforce, url: str, sleeps: Sleeps, fake_redis: fakeredis.FakeRedis, fault: dict[str, Any]
) -> None:
    lead_id = lead(fake)
    config = SalesforceSettings(max_retry_after_s=60)
    limiter = RateLimiter(fake_redis, 25, 1.0, key=RATE_KEY, margin_s=0)
    ex = SalesforceExecutor(SalesforceClient(url, TOKEN, "59.0", limiter, config, sleep=sleeps), config)
    fake.configure(retry_after=120, **fault)
    with pytest.raises(TransientCrmError, match="Retry-After"):
        ex.execute([action("mark_lost", lead_id)])
    # Not sent again before the org allows it, nor waited out in the job: RQ's retry takes over.
    assert len(fake.calls) == 1 and sleeps == []
    until = fake_redis.get(RATE_KEY + ":until")
    if fault.get("error_status") == 503:
        assert until is None  # a server error's Retry-After holds back this request, not the org's budget
    else:
        assert until is not None and 110 < int(until) / 1_000_000 - time.time() <= 120
    assert fake.get("Lead", lead_id)["Status"] == "Working - Contacted"  # type: ignore[index]


def test_a_retry_after_within_the_cap_is_waited_out(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    fake.configure(error_next=1, error_status=429, retry_after=60)
    [outcome] = executor(url, sleeps, max_retry_after_s=60).execute([action("mark_lost", lead_id)])
    assert outcome.ok and len(sleeps) == 1 and 60.0 <= sleeps[0] <= 61.0


def test_backoff_without_retry_after_is_exponential_with_jitter(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    fake.configure(error_next=3, error_status=503)
    [outcome] = executor(url, sleeps, backoff_initial_s=0.5, backoff_max_s=30).execute([action("mark_lost", lead_id)])
    assert outcome.ok
    assert len(sleeps) == 3
    # The policy both CRM clients share (worker/crm/http.py): full jitter under a doubling ceiling.
    assert all(0.25 <= wait <= 0.5 * 2**i for i, wait in enumerate(sleeps))


def test_5xx_is_bounded_then_transient_error(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    fake.configure(error_rate=1.0)
    with pytest.raises(TransientCrmError, match="HTTP 500") as caught:
        executor(url, sleeps, max_attempts=4).execute([action("mark_lost", lead_id)])
    assert "4 attempts" in str(caught.value)
    assert len(fake.calls) == 4 and len(sleeps) == 3
    assert fake.get("Lead", lead_id)["Status"] == "Working - Contacted"  # type: ignore[index]


def test_connection_refused_is_transient(sleeps: Sleeps) -> None:
    ex = executor("http://127.0.0.1:9", sleeps, max_attempts=2, connect_timeout_s=0.5)
    with pytest.raises(TransientCrmError, match="ConnectionError on GET query"):
        ex.execute([action("mark_lost", "00Q000000000001EAA")])


def test_401_raises_an_auth_error_with_a_sentence(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    with pytest.raises(SalesforceAuthError, match="SALESFORCE_ACCESS_TOKEN") as caught:
        executor(url, sleeps, token="expired-session").execute([action("mark_lost", lead_id)])
    assert isinstance(caught.value, CrmError)
    assert "expired-session" not in str(caught.value)
    assert len(fake.calls) == 1 and sleeps == []  # not retried: a new token is needed, not patience


def test_suppress_opts_out_the_lead_and_its_individual(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    individual = fake.add("Individual", {"HasOptedOutSolicit": False})
    with_individual, without, email_only = lead(fake, IndividualId=individual), lead(fake), lead(fake)
    outcomes = executor(url, sleeps).execute(
        [
            action("suppress", with_individual, reason="do_not_contact"),
            action("suppress", without, reason="do_not_contact"),
            action("suppress", email_only, reason="do_not_contact", channels=["email"]),
        ]
    )
    assert all(o.ok for o in outcomes), outcomes
    for lead_id in (with_individual, without):
        record = fake.get("Lead", lead_id)
        assert record is not None and record["HasOptedOutOfEmail"] is True and record["DoNotCall"] is True
    partial = fake.get("Lead", email_only)
    assert partial is not None and partial["HasOptedOutOfEmail"] is True and "DoNotCall" not in partial
    assert fake.get("Individual", individual)["HasOptedOutSolicit"] is True  # type: ignore[index]
    assert len(fake.api_calls("PATCH", "composite/sobjects")) == 1


def test_suppress_in_an_org_without_individuals(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    fake.configure(missing_fields=["IndividualId"])
    lead_id = lead(fake)
    [outcome] = executor(url, sleeps).execute([action("suppress", lead_id, reason="do_not_contact")])
    assert outcome.ok
    assert fake.get("Lead", lead_id)["DoNotCall"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("channels", "solicit"),
    [(["phone"], False), (["email"], False), (["email", "phone"], True), (["all"], True), (None, True)],
    ids=["phone", "email", "email+phone", "all", "none-means-all"],
)
def test_the_individual_opts_out_of_all_solicitation_only_for_every_channel(
    fake: FakeSalesforce, url: str, sleeps: Sleeps, channels: list[str] | None, solicit: bool
) -> None:
    individual = fake.add("Individual", {"HasOptedOutSolicit": False})
    lead_id = lead(fake, IndividualId=individual)
    extra = {} if channels is None else {"channels": channels}
    [outcome] = executor(url, sleeps).execute([action("suppress", lead_id, reason="do_not_contact", **extra)])
    assert outcome.ok, outcome.detail
    record = fake.get("Lead", lead_id)
    assert record is not None
    covered = {"email", "phone"} if channels is None or "all" in channels else set(channels)
    assert record.get("HasOptedOutOfEmail") is ("email" in covered or None)
    assert record.get("DoNotCall") is ("phone" in covered or None)
    # docs/lifecycle.md guardrail 5: the channels decide what the CRM is told; "don't market" is every channel.
    assert fake.get("Individual", individual)["HasOptedOutSolicit"] is solicit  # type: ignore[index]


@pytest.mark.parametrize("with_individual", [False, True], ids=["single-patch", "composite"])
def test_a_refused_loss_does_not_take_the_opt_out_down(
    fake: FakeSalesforce, url: str, sleeps: Sleeps, with_individual: bool
) -> None:
    fake.configure(missing_fields=["Pruner_Lost_Reason__c"])  # an org without the custom reason field
    individual = fake.add("Individual", {"HasOptedOutSolicit": False})
    both = lead(fake, IndividualId=individual) if with_individual else lead(fake)
    lost, suppress = action("mark_lost", both), action("suppress", both, reason="do_not_contact")
    outcomes = {o.action_id: o for o in executor(url, sleeps).execute([lost, suppress])}
    assert outcomes[suppress["id"]].ok, outcomes[suppress["id"]].detail
    assert not outcomes[lost["id"]].ok and "INVALID_FIELD" in outcomes[lost["id"]].detail
    record = fake.get("Lead", both)
    assert record is not None and record["HasOptedOutOfEmail"] is True and record["DoNotCall"] is True
    assert record["Status"] == "Working - Contacted"
    if with_individual:
        assert fake.get("Individual", individual)["HasOptedOutSolicit"] is True  # type: ignore[index]


def test_a_refused_opt_out_does_not_take_the_loss_down(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    fake.configure(missing_fields=["DoNotCall"])
    both = lead(fake)
    lost, suppress = action("mark_lost", both, reason="budget"), action("suppress", both, reason="do_not_contact")
    outcomes = {o.action_id: o for o in executor(url, sleeps).execute([lost, suppress])}
    assert outcomes[lost["id"]].ok, outcomes[lost["id"]].detail
    assert not outcomes[suppress["id"]].ok and "INVALID_FIELD" in outcomes[suppress["id"]].detail
    record = fake.get("Lead", both)
    assert record is not None and (record["Status"], record["Pruner_Lost_Reason__c"]) == (
        "Closed - Not Converted",
        "budget",
    )


def test_loss_and_opt_out_of_one_lead_are_still_one_update(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    both = lead(fake)
    outcomes = executor(url, sleeps).execute([action("mark_lost", both), action("suppress", both)])
    assert all(o.ok for o in outcomes), outcomes
    [patch] = fake.api_calls("PATCH")
    assert patch["path"] == f"sobjects/Lead/{both}"
    assert set(patch["json"]) == {"Status", "Pruner_Lost_Reason__c", "HasOptedOutOfEmail", "DoNotCall"}


def test_missing_opportunity_link_field_does_not_block_the_loss(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    fake.configure(missing_fields=["Pruner_Lead_Id__c"])
    lead_id = lead(fake)
    [outcome] = executor(url, sleeps).execute([action("mark_lost", lead_id)])
    assert outcome.ok and "opportunities not closed" in outcome.detail
    assert fake.get("Lead", lead_id)["Status"] == "Closed - Not Converted"  # type: ignore[index]


def test_query_pages_are_followed(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    fake.configure(page_size=4)
    lead_id = lead(fake)
    for _ in range(10):
        fake.add("Opportunity", {"StageName": "Prospecting", "Pruner_Lead_Id__c": lead_id})
    [outcome] = executor(url, sleeps).execute([action("mark_lost", lead_id)])
    assert outcome.ok
    assert {o["StageName"] for o in fake.find("Opportunity")} == {"Closed Lost"}
    assert len(fake.api_calls("GET", "query")) == 3


def test_tasks_are_created_for_the_owner_once(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    first, second, queue_owned = lead(fake), lead(fake), lead(fake, OwnerId="00G000000000001AAA")
    actions = [
        action("breakup_task", first, reason="no_response"),
        action("reengage_task", second, reason="not_interested"),
        action("breakup_task", queue_owned, reason="deprioritized"),
    ]
    ex = executor(url, sleeps)
    assert all(o.ok for o in ex.execute(actions))
    [create] = fake.api_calls("POST", "composite/sobjects")
    assert len(create["json"]["records"]) == 3
    tasks = {t["WhoId"]: t for t in fake.find("Task")}
    assert set(tasks) == {first, second, queue_owned}
    breakup = tasks[first]
    assert breakup["Subject"].startswith("Pruner: Send a polite break-up message: no response after many follow-ups")
    assert f"[pruner-ref {task_ref(actions[0]['id'])}]" in breakup["Subject"]
    assert "thanks them" in breakup["Description"] and "stopping" in breakup["Description"]
    assert "door open" in breakup["Description"] and "no response" in breakup["Description"]
    assert (breakup["Status"], breakup["ActivityDate"]) == ("Not Started", datetime.now(tz=UTC).date().isoformat())
    assert breakup["OwnerId"] == "005000000000001AAA"
    assert tasks[queue_owned]["OwnerId"] == API_USER_ID  # a queue cannot own a task: Salesforce's default
    assert "check-in" in tasks[second]["Description"]
    # A repeated drain finds the tasks and creates nothing.
    assert all(o.ok for o in ex.execute(actions))
    assert len(fake.find("Task")) == 3


def test_a_lost_answer_to_a_task_create_does_not_duplicate_it(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    fake.configure(error_after_write_next=1)
    [outcome] = executor(url, sleeps).execute([action("breakup_task", lead_id, reason="no_response")])
    assert outcome.ok
    assert len(fake.find("Task", WhoId=lead_id)) == 1
    assert len(sleeps) == 1


def test_task_for_a_missing_lead_or_refused_task(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    refused, fine = lead(fake), lead(fake)
    fake.configure(fail_records={refused: {"code": "INVALID_CROSS_REFERENCE_KEY", "times": -1}})
    outcomes = executor(url, sleeps).execute(
        [
            action("breakup_task", "00Q000000000998AAA"),
            action("breakup_task", refused),
            action("breakup_task", fine),
        ]
    )
    assert [o.ok for o in outcomes] == [False, False, True]
    assert "did not return the lead" in outcomes[0].detail
    assert "Task creation failed" in outcomes[1].detail and "INVALID_CROSS_REFERENCE_KEY" in outcomes[1].detail
    assert len(fake.api_calls("POST", "sobjects/Task")) == 1  # the refused one, alone, once more


def test_bad_actions_fail_without_calls(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    outcomes = executor(url, sleeps).execute([action("explode", "00Q000000000001EAA"), action("mark_lost", "nope")])
    assert [o.ok for o in outcomes] == [False, False]
    assert "unknown action kind" in outcomes[0].detail and "record id" in outcomes[1].detail
    assert fake.calls == []


def test_api_usage_is_tracked_and_logs_hold_no_personal_data(
    fake: FakeSalesforce, url: str, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    fake.configure(api_limit=10)
    lead_id = lead(fake, Email="ada@example.com", LastName="Lovelace")
    fake.configure(fail_records={lead_id: {"code": "INVALID_EMAIL_ADDRESS", "times": -1}})
    ex = executor(url, sleeps)
    # "worker.crm": the usage line comes from worker.crm.salesforce_client (not a child of
    # worker.crm.salesforce); alone, this test saw none of it, and passed only after others.
    with caplog.at_level(logging.DEBUG, logger="worker.crm"):
        [outcome] = ex.execute([action("mark_lost", lead_id)])
    assert not outcome.ok
    assert ex.client.api_usage is not None and ex.client.api_usage[1] == 10
    assert "api usage" in caplog.text
    assert "ada@example.com" not in caplog.text and "Lovelace" not in caplog.text


def test_with_credentials_a_401_logs_in_again_once(fake: FakeSalesforce, url: str, sleeps: Sleeps) -> None:
    lead_id = lead(fake)
    logins: list[str] = []
    ex = executor(url, sleeps, token="expired-session")
    ex.client.refresh = lambda: logins.append("login") or TOKEN  # type: ignore[func-returns-value]
    outcomes = ex.execute([action("mark_lost", lead_id)])
    assert [o.ok for o in outcomes] == [True] and logins == ["login"]
    assert fake.get("Lead", lead_id)["Status"] == "Closed - Not Converted"  # type: ignore[index]
    ex = executor(url, sleeps, token="expired-session")
    ex.client.refresh = lambda: "still-wrong"
    with pytest.raises(SalesforceAuthError):  # a second 401 is not retried again
        ex.execute([action("mark_lost", lead(fake))])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SALESFORCE_USERNAME": "u", "SALESFORCE_PASSWORD": "p", "SALESFORCE_SECURITY_TOKEN": "t"},
            {"username": "u", "password": "p", "security_token": "t", "domain": "login"},
        ),
        (
            {
                "SALESFORCE_USERNAME": "u",
                "SALESFORCE_CONSUMER_KEY": "k",
                "SALESFORCE_PRIVATE_KEY_FILE": "/k.pem",
                "SALESFORCE_DOMAIN": "test",
            },
            {"username": "u", "consumer_key": "k", "privatekey_file": "/k.pem", "domain": "test"},
        ),
        (
            {"SALESFORCE_CONSUMER_KEY": "k", "SALESFORCE_CONSUMER_SECRET": "s"},
            {"consumer_key": "k", "consumer_secret": "s", "domain": "login"},
        ),
    ],
    ids=["password", "jwt", "client-credentials"],
)
def test_login_flows_go_through_simple_salesforce(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: dict[str, str]
) -> None:
    import simple_salesforce.login as sf_login

    from worker.crm.settings import credentials_login

    seen: dict[str, Any] = {}

    def fake_login(**kwargs: Any) -> tuple[str, str]:
        seen.update(kwargs)
        return "session-123", "example.my.salesforce.com"

    monkeypatch.setattr(sf_login, "SalesforceLogin", fake_login)
    login = credentials_login(env)
    assert login is not None and login() == "session-123"
    assert seen == expected
    assert credentials_login({}) is None


def test_an_absurd_retry_after_holds_every_worker_back_ten_minutes_at_most(fake_redis: fakeredis.FakeRedis) -> None:
    # A Retry-After dated 2049 must not stall every drain and engagement fetch for decades.
    limiter = RateLimiter(fake_redis, 25, 1.0, key=RATE_KEY, margin_s=0)
    limiter.block(8_437 * 86_400)
    until = fake_redis.get(RATE_KEY + ":until")
    assert until is not None and int(until) / 1_000_000 - time.time() <= 600
