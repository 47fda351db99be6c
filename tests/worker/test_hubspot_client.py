"""The HubSpot adapter against the fake HubSpot server (real HTTP) and the real Redis (DB 12)."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

import worker.crm.hubspot_client as hubspot_module
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.helpers import redis_url_for_tests
from worker.config import Config
from worker.crm.base import TransientCrmError
from worker.crm.hubspot import HubSpotExecutor, build_executor
from worker.crm.hubspot_client import MAX_ATTEMPTS, TIMEOUT, HubSpotClient
from worker.crm.hubspot_responses import HubSpotAuthError, HubSpotNotFound
from worker.crm.hubspot_tasks import task_marker
from worker.crm.ratelimit import RateLimiter, parse_rate
from worker.errors import ConfigError

REDIS_URL = redis_url_for_tests(12)
ROOT = Path(__file__).resolve().parents[2]
NOW_S = 1_790_000_000.0


def client(server: FakeHubSpotServer, conn: redis.Redis, **options: Any) -> HubSpotClient:
    limiter = RateLimiter(conn, limit=1000, window_s=1.0, key="pruner:ratelimit:unit", margin_s=0)
    options.setdefault("backoff_base_s", 0.01)
    options.setdefault("backoff_cap_s", 0.05)
    options.setdefault("search_delay_s", 0.0)
    return HubSpotClient(server.url, options.pop("token", TOKEN), limiter, **options)


@pytest.fixture
def executor(server: FakeHubSpotServer, conn: redis.Redis) -> Iterator[HubSpotExecutor]:
    with HubSpotExecutor(client(server, conn), conn, clock=lambda: NOW_S) as built:
        yield built


def action(kind: str, lead: str, reason: str | None = "not_interested", n: int = 0) -> dict[str, Any]:
    state = {"mark_lost": "LOST", "breakup_task": "BREAKUP_DUE", "reengage_task": "REENGAGE_DUE"}.get(kind, "X")
    return {
        "id": f"hubspot:{lead}:rule:{state}:{1_790_000_000_000 + n}",
        "kind": kind,
        "crm": "hubspot",
        "lead_id": lead,
        "rule": "rule",
        "reason": reason,
        "at": "2026-09-21T10:00:00Z",
        "dry_run": False,
    }


def seed(fake: FakeHubSpot, count: int, start: int = 101) -> list[str]:
    """Contacts with an email and one open deal each; return their ids."""
    ids = [str(start + i) for i in range(count)]
    for cid in ids:
        fake.add_contact(cid, f"lead{cid}@example.com", hs_lead_status="OPEN")
        fake.add_deal(f"d{cid}", cid)
    return ids


def writes(fake: FakeHubSpot, object_type: str) -> list[dict[str, Any]]:
    return [
        c
        for c in fake.api_calls()
        if c["path"] == f"/crm/v3/objects/{object_type}/batch/update"
        or (c["method"] == "PATCH" and c["path"].startswith(f"/crm/v3/objects/{object_type}/"))
    ]


# -- configuration ---------------------------------------------------------------------------


def test_build_executor_fails_loudly_without_a_token(conn: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="HUBSPOT_ACCESS_TOKEN is not set"):
        build_executor(Config.from_env({}), conn)


def test_build_executor_reads_the_environment(conn: redis.Redis) -> None:
    config = Config.from_env(
        {
            "HUBSPOT_ACCESS_TOKEN": "t",
            "HUBSPOT_API_BASE": "http://127.0.0.1:9/",
            "HUBSPOT_RATE_LIMIT": "7/3",
            "HUBSPOT_LOST_STATUS": "BAD_TIMING",
            "HUBSPOT_DEAL_LOST_STAGE": "lost2",
        }
    )
    with build_executor(config, conn) as built:
        assert built.client.base_url == "http://127.0.0.1:9"
        assert built.client.limiter is not None
        assert (built.client.limiter.limit, built.client.limiter.window_s) == (7, 3.0)
        assert built.settings.lost_status == "BAD_TIMING"
        assert "lost2" in built.settings.closed_stages
        assert built.settings.reengage_months == 4  # the default policy's 120 days


@pytest.mark.parametrize("raw", ["abc", "100", "0/10", "10/0", "10/-1", "x/10"])
def test_rate_limit_setting_is_validated(raw: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(raw))):
        parse_rate(raw)


def test_rate_limit_setting_parses() -> None:
    assert parse_rate("100/10") == (100, 10.0)
    assert parse_rate(" 190 / 10s ") == (190, 10.0)


def test_api_base_must_be_http(conn: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="got 'ftp://x'"):
        HubSpotClient("ftp://x", "t")


# -- coalescing ------------------------------------------------------------------------------


def test_thirty_mark_lost_actions_become_a_handful_of_batch_calls(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    ids = seed(fake, 30)
    fake.add_deal("won", ids[0], stage="closedwon")  # closed deals are left alone
    outcomes = executor.execute([action("mark_lost", cid) for cid in ids])
    assert [o.ok for o in outcomes] == [True] * 30
    for cid in ids:
        contact = fake.contact(cid)
        assert (contact["hs_lead_status"], contact["pruner_lost_reason"]) == ("UNQUALIFIED", "not_interested")
        deal = fake.deal(f"d{cid}")
        assert (deal["dealstage"], deal["closed_lost_reason"]) == ("closedlost", "not_interested")
    assert fake.deal("won")["dealstage"] == "closedwon"
    calls = [(c["method"], c["path"]) for c in fake.api_calls()]
    assert calls == [
        ("POST", "/crm/v3/objects/contacts/batch/update"),
        ("POST", "/crm/v4/associations/contacts/deals/batch/read"),
        ("POST", "/crm/v3/objects/deals/batch/read"),
        ("POST", "/crm/v3/objects/deals/batch/update"),
    ]
    assert len(fake.api_calls()[0]["body"]["inputs"]) == 30
    assert len(fake.api_calls()[3]["body"]["inputs"]) == 30  # the closed-won deal is not in it


def test_more_than_a_hundred_records_are_split_into_batches_of_a_hundred(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    ids = seed(fake, 150)
    assert all(o.ok for o in executor.execute([action("mark_lost", cid) for cid in ids]))
    sizes = [len(c["body"]["inputs"]) for c in fake.api_calls("POST", "/contacts/batch/update")]
    assert sizes == [100, 50]


def test_a_single_pending_update_is_a_patch(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    assert executor.execute([action("mark_lost", "101", reason="budget")])[0].ok
    patched = [c["path"] for c in fake.api_calls("PATCH")]
    assert patched == ["/crm/v3/objects/contacts/101", "/crm/v3/objects/deals/d101"]
    assert fake.deal("d101")["closed_lost_reason"] == "budget"


def test_actions_on_one_contact_are_merged_into_one_input(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 2)
    batch = [action("mark_lost", "101"), action("suppress", "101"), action("mark_lost", "102", "budget", n=1)]
    assert all(o.ok for o in executor.execute(batch))
    (call,) = fake.api_calls("POST", "/contacts/batch/update")
    assert sorted(i["id"] for i in call["body"]["inputs"]) == ["101", "102"]  # HubSpot refuses an id twice
    assert fake.contact("101")["pruner_do_not_contact"] == "true"
    assert fake.contact("101")["hs_lead_status"] == "UNQUALIFIED"


# -- per-record failures ---------------------------------------------------------------------


def test_records_a_207_refuses_are_retried_one_by_one(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    ids = seed(fake, 10)
    fake.configure(batch_fail_ids=["103", "107"])
    outcomes = executor.execute([action("mark_lost", cid) for cid in ids])
    assert all(o.ok for o in outcomes)
    assert all(fake.contact(cid)["hs_lead_status"] == "UNQUALIFIED" for cid in ids)
    assert [c["status"] for c in fake.api_calls("POST", "/contacts/batch/update")] == [207]
    patched = sorted(c["path"] for c in fake.api_calls("PATCH", "/contacts/"))
    assert patched == ["/crm/v3/objects/contacts/103", "/crm/v3/objects/contacts/107"]


def test_a_deleted_contact_fails_alone_with_a_sentence(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    ids = seed(fake, 5)
    fake.delete("contacts", "103")
    outcomes = {o.action_id: o for o in executor.execute([action("mark_lost", cid) for cid in ids])}
    failed = outcomes[action("mark_lost", "103")["id"]]
    assert not failed.ok
    assert failed.detail == "HubSpot contacts record 103 was not found (deleted or merged?)"
    assert sum(o.ok for o in outcomes.values()) == 4
    assert [c["status"] for c in writes(fake, "contacts")] == [207]  # a missing record is not asked for again
    assert fake.deal("d103")["dealstage"] == "appointmentscheduled"  # its deal is not touched without it


def test_a_refused_batch_naming_the_culprit_writes_the_others(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    ids = seed(fake, 5)
    fake.configure(missing_batch_status=400)
    outcomes = executor.execute([action("mark_lost", cid) for cid in [*ids, "999"]])
    assert [o.ok for o in outcomes] == [True] * 5 + [False]
    assert "999 was not found" in outcomes[-1].detail
    statuses = [(c["method"], c["path"].rsplit("/", 1)[-1], c["status"]) for c in writes(fake, "contacts")]
    assert statuses == [("POST", "update", 400), ("POST", "update", 200)]  # no PATCH to learn 999 is gone


def test_a_refused_batch_naming_no_record_is_retried_record_by_record(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    ids = seed(fake, 3)
    fake.configure(script=[{"status": 400, "path": "/crm/v3/objects/contacts/batch/update"}])
    assert all(o.ok for o in executor.execute([action("mark_lost", cid) for cid in ids]))
    assert [(c["method"], c["status"]) for c in writes(fake, "contacts")] == [("POST", 400)] + [("PATCH", 200)] * 3


def test_other_4xx_are_not_retried_and_fail_the_record(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 400, "path": "/crm/v3/objects/contacts/101"}])
    (outcome,) = executor.execute([action("mark_lost", "101")])
    assert not outcome.ok
    assert outcome.detail.startswith("HubSpot refused the update of contacts record 101 (HTTP 400)")
    assert len(fake.api_calls("PATCH", "/contacts/101")) == 1


def test_a_bad_token_fails_the_drain_instead_of_every_record(server: FakeHubSpotServer, conn: redis.Redis) -> None:
    seed(server.fake, 1)
    with HubSpotExecutor(client(server, conn, token="wrong"), conn) as bad:
        with pytest.raises(HubSpotAuthError, match="HTTP 401"):
            bad.execute([action("mark_lost", "101")])
    assert len(server.fake.api_calls()) == 1  # not retried


# -- retries ---------------------------------------------------------------------------------


def test_retry_after_on_a_429_is_honoured(fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 429, "retry_after": "1"}])
    with HubSpotClient(server.url, TOKEN, RateLimiter(conn, limit=100, window_s=1, margin_s=0)) as real:
        started = time.monotonic()
        assert real.update("contacts", "101", {"hs_lead_status": "UNQUALIFIED"}) is None
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    assert [c["status"] for c in fake.api_calls()] == [429, 200]
    assert fake.api_calls()[1]["at"] - fake.api_calls()[0]["at"] >= 1.0


def test_an_http_date_retry_after_is_read_too(fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis) -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    seed(fake, 1)
    # Ten minutes ahead as an HTTP-date: past the retry budget, so the client gives up at once (it
    # used to ignore dates and retry on HubSpot's 10 s interval instead).
    later = format_datetime(datetime.now(tz=UTC) + timedelta(minutes=10), usegmt=True)
    fake.configure(script=[{"status": 429, "retry_after": later}])
    with client(server, conn) as short, pytest.raises(TransientCrmError, match="HTTP 429"):
        short.update("contacts", "101", {"hs_lead_status": "UNQUALIFIED"})
    assert len(fake.api_calls()) == 1


def test_hubspot_rate_limit_interval_is_honoured_without_retry_after(
    fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 429, "interval_ms": 400}])
    with HubSpotClient(server.url, TOKEN, RateLimiter(conn, margin_s=0)) as real:
        assert real.update("contacts", "101", {"hs_lead_status": "UNQUALIFIED"}) is None
    first, second = fake.api_calls()
    assert first["status"] == 429 and second["status"] == 200
    assert second["at"] - first["at"] >= 0.4


def test_a_wait_longer_than_the_retry_budget_gives_up_at_once_and_holds_back_every_worker(
    fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 429, "retry_after": "600"}])
    with client(server, conn) as short, pytest.raises(TransientCrmError, match="HTTP 429"):
        short.update("contacts", "101", {"hs_lead_status": "UNQUALIFIED"})
    assert len(fake.api_calls()) == 1
    other_worker = RateLimiter(conn, limit=1000, window_s=1.0, key="pruner:ratelimit:unit", margin_s=0)
    with pytest.raises(TimeoutError):
        other_worker.acquire(timeout_s=0.3)
    assert len(fake.api_calls()) == 1


def test_the_daily_limit_is_not_retried(fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis) -> None:
    body = {"status": "error", "errorType": "RATE_LIMIT", "policyName": "DAILY", "message": "daily limit"}
    fake.configure(script=[{"status": 429, "body": body}])
    with client(server, conn) as c, pytest.raises(TransientCrmError, match="daily"):
        c.update("contacts", "101", {"a": "b"})
    assert len(fake.api_calls()) == 1


def test_5xx_are_retried_then_raise_transient_after_bounded_attempts(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 3)
    fake.configure(fail_paths={"/crm/v3/objects/contacts/batch/update": 503})
    with pytest.raises(TransientCrmError, match="POST /crm/v3/objects/contacts/batch/update: HTTP 503"):
        executor.execute([action("mark_lost", cid) for cid in ("101", "102", "103")])
    assert len(fake.api_calls()) == MAX_ATTEMPTS == 6


def test_a_few_5xx_then_success(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 503}, {"status": 502}])
    assert executor.execute([action("mark_lost", "101")])[0].ok
    assert [c["status"] for c in fake.api_calls()][:3] == [503, 502, 200]


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_errors_are_retried_and_name_no_email() -> None:
    dead = HubSpotClient(f"http://127.0.0.1:{closed_port()}", TOKEN, None, max_attempts=3, backoff_base_s=0.01)
    with dead, pytest.raises(TransientCrmError) as raised:
        dead.unsubscribe_all("someone@example.com", "101")
    assert dead.requests_sent == 3
    # requests' own messages carry the URL, here with the email in it: none of that may surface.
    assert "@" not in str(raised.value) and raised.value.__cause__ is None
    assert "{email}" in str(raised.value)


def test_every_request_has_connect_and_read_timeouts(server: FakeHubSpotServer, conn: redis.Redis) -> None:
    seen: list[Any] = []

    class Recording(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            seen.append(kwargs.get("timeout"))
            return super().request(*args, **kwargs)

    seed(server.fake, 2)
    with HubSpotExecutor(client(server, conn, session=Recording()), conn) as ex:
        ex.execute([action("mark_lost", "101"), action("suppress", "102"), action("breakup_task", "101")])
    assert len(seen) >= 5 and set(seen) == {TIMEOUT} == {(5.0, 30.0)}


# -- tasks and suppression -------------------------------------------------------------------


def test_tasks_are_created_on_the_contact(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 2)
    outcomes = executor.execute([action("breakup_task", "101", "no_response"), action("reengage_task", "102")])
    assert all(o.ok for o in outcomes)
    (call,) = fake.api_calls("POST", "/tasks")
    assert call["path"] == "/crm/v3/objects/tasks/batch/create"
    assert call["body"]["inputs"][0]["associations"] == [
        {"to": {"id": "101"}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}]}
    ]
    (breakup,) = fake.tasks_for("101")
    assert breakup["hs_task_subject"] == "Send a polite break-up message: no response after many follow-ups"
    body = breakup["hs_task_body"]
    assert "thanks them" in body and "stopping" in body and "door open" in body and "last piece of value" in body
    assert (breakup["hs_task_status"], breakup["hs_task_priority"]) == ("NOT_STARTED", "MEDIUM")
    assert breakup["hs_timestamp"] == "1790000000000"
    (check_in,) = fake.tasks_for("102")
    assert check_in["hs_task_subject"] == "Check in: lost 4 months ago (they said they are not interested)"
    assert "friendly" in check_in["hs_task_body"]


def test_one_task_is_a_single_create(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    assert executor.execute([action("breakup_task", "101")])[0].ok
    assert [c["path"] for c in fake.api_calls("POST")] == [
        "/crm/v3/objects/contacts/batch/read",
        "/crm/v3/objects/tasks",
    ]
    assert len(fake.tasks_for("101")) == 1


def test_a_task_for_a_deleted_contact_fails_alone(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 3)
    fake.delete("contacts", "102")
    outcomes = executor.execute([action("breakup_task", cid) for cid in ("101", "102", "103")])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "contact 102" in outcomes[1].detail
    assert len(fake.state()["tasks"]) == 2


def test_a_task_before_a_suppress_of_the_same_lead_is_not_created(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    outcomes = executor.execute([action("breakup_task", "101"), action("suppress", "101")])
    assert all(o.ok for o in outcomes) and "skipped" in outcomes[0].detail
    assert fake.tasks_for("101") == []


def test_suppress_unsubscribes_the_email_and_flags_the_contact(
    fake: FakeHubSpot, executor: HubSpotExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_contact("101", "o'neil+sales@example.com")
    fake.add_contact("102")  # no email: only the property can be set
    caplog.set_level(logging.DEBUG)
    outcomes = executor.execute([action("suppress", "101"), action("suppress", "102"), action("suppress", "404")])
    assert [o.ok for o in outcomes] == [True, True, False]
    assert "no email" in outcomes[1].detail and "404 was not found" in outcomes[2].detail
    assert fake.unsubscribed == ["o'neil+sales@example.com"]
    (call,) = fake.api_calls("POST", "/communication-preferences/")
    assert call["query"] == {"channel": "EMAIL"}
    assert fake.contact("101")["pruner_do_not_contact"] == "true"
    assert fake.contact("102")["pruner_do_not_contact"] == "true"
    assert not any("@" in r.getMessage() for r in caplog.records if r.name.startswith("worker"))


def test_a_refused_unsubscribe_fails_the_action_but_still_flags_the_contact(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 400, "path": "/communication-preferences/"}])
    (outcome,) = executor.execute([action("suppress", "101")])
    assert not outcome.ok
    assert outcome.detail == "HubSpot refused to unsubscribe contact 101 (HTTP 400): Scripted HTTP 400"
    assert fake.contact("101")["pruner_do_not_contact"] == "true"


def test_a_refused_lost_reason_does_not_keep_the_do_not_contact_out(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(missing_properties=["pruner_lost_reason"])  # the admin never created it
    lost, suppress = executor.execute([action("mark_lost", "101"), action("suppress", "101")])
    assert suppress.ok
    assert not lost.ok and 'Property "pruner_lost_reason" does not exist' in lost.detail
    assert fake.contact("101")["pruner_do_not_contact"] == "true"
    bodies = [c["body"]["properties"] for c in fake.api_calls("PATCH", "/contacts/101")]
    assert bodies[1:] == [{"pruner_do_not_contact": "true"}, {"hs_lead_status": "UNQUALIFIED",
                                                            "pruner_lost_reason": "not_interested"}]  # fmt: skip


def test_merged_contact_updates_refused_in_a_batch_still_flag_do_not_contact(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 3)
    fake.configure(missing_properties=["pruner_lost_reason"])
    batch = [
        action("suppress", "101"),
        action("mark_lost", "101"),
        action("mark_lost", "102", n=1),
        action("suppress", "102", n=1),
        action("suppress", "103"),
    ]
    outcomes = executor.execute(batch)
    assert [(o.action_id.split(":")[1], o.ok) for o in outcomes] == [
        ("101", True), ("101", False), ("102", False), ("102", True), ("103", True)
    ]  # fmt: skip
    assert all(fake.contact(c)["pruner_do_not_contact"] == "true" for c in ("101", "102", "103"))
    assert all(fake.contact(c)["hs_lead_status"] == "OPEN" for c in ("101", "102"))


def test_a_refused_do_not_contact_property_does_not_keep_the_loss_out(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(missing_properties=["pruner_do_not_contact"])
    lost, suppress = executor.execute([action("mark_lost", "101"), action("suppress", "101")])
    assert lost.ok and not suppress.ok
    assert fake.contact("101")["hs_lead_status"] == "UNQUALIFIED"
    assert fake.unsubscribed == ["lead101@example.com"]  # the unsubscribe itself went through


def test_a_phone_only_do_not_contact_keeps_email_subscriptions(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 2)
    phone = {**action("suppress", "101"), "channels": ["phone"]}
    email = {**action("suppress", "102"), "channels": ["email"]}
    assert all(o.ok for o in executor.execute([phone, email]))
    assert fake.unsubscribed == ["lead102@example.com"]
    assert fake.contact("101")["pruner_do_not_contact"] == "true"


# -- exactly once across a failed drain ------------------------------------------------------


def test_a_rerun_after_a_transient_failure_creates_no_second_task(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    ids = seed(fake, 101)
    actions = [action("breakup_task", cid) for cid in ids]
    fake.configure(fail_paths={"/crm/v3/objects/tasks$": 503})  # the 101st, sent alone, fails
    with pytest.raises(TransientCrmError):
        executor.execute(actions)
    assert len(fake.state()["tasks"]) == 100
    fake.configure(fail_paths={})
    assert all(o.ok for o in executor.execute(actions))
    assert all(len(fake.tasks_for(cid)) == 1 for cid in ids)


def task_api_calls(fake: FakeHubSpot) -> list[dict[str, Any]]:
    """Every call but the read of the contacts' owners that precedes creating their tasks."""
    return [c for c in fake.api_calls() if c["path"] != "/crm/v3/objects/contacts/batch/read"]


def task_creates(fake: FakeHubSpot) -> list[dict[str, Any]]:
    return [c for c in fake.api_calls("POST", "/crm/v3/objects/tasks") if not c["path"].endswith("/search")]


def test_a_refused_task_whose_resend_fails_keeps_the_batch_recorded(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    ids = seed(fake, 3)
    actions = [action("breakup_task", cid) for cid in [*ids, "104"]]  # 104 is not in HubSpot: refused in a 207
    # 104 is deleted between the owners' read (which still finds it) and the create...
    found = {"status": "COMPLETE", "results": [{"id": c, "properties": {}} for c in [*ids, "104"]]}
    fake.configure(
        script=[{"path": "/crm/v3/objects/contacts/batch/read", "status": 200, "body": found}],
        fail_paths={"/crm/v3/objects/tasks$": 503},  # ...and its re-send alone meets 503s
    )
    with pytest.raises(TransientCrmError):
        executor.execute(actions)
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 1]
    fake.configure(fail_paths={})
    before = len(task_creates(fake))
    outcomes = executor.execute(actions)
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert "contact 104 was not found" in outcomes[3].detail
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 1]
    assert task_creates(fake)[before:] == []  # the created ones are not sent again; 104 is known gone


def test_one_by_one_creates_after_a_refused_batch_are_recorded_as_they_happen(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    ids = seed(fake, 3)
    actions = [action("breakup_task", cid) for cid in ids]
    fake.configure(
        script=[{"status": 400, "path": "/crm/v3/objects/tasks/batch/create"}],  # nothing created
        fail_task_contacts={"103": 503},  # the third single create fails transiently
    )
    with pytest.raises(TransientCrmError):
        executor.execute(actions)
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 0]
    fake.configure(fail_task_contacts={})
    before = len(task_creates(fake))
    assert all(o.ok for o in executor.execute(actions))
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 1]
    assert [c["body"]["associations"][0]["to"]["id"] for c in task_creates(fake)[before:]] == ["103"]


def wait_for_calls(fake: FakeHubSpot, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The fake records a call once it has answered: a late answer shows up late."""
    deadline = time.monotonic() + timeout_s
    while len(task_api_calls(fake)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return task_api_calls(fake)


def test_a_create_answered_after_the_read_timeout_is_not_sent_again(
    fake: FakeHubSpot, executor: HubSpotExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(fake, 1)
    monkeypatch.setattr(hubspot_module, "TIMEOUT", (5.0, 0.3))
    fake.configure(script=[{"path": "/crm/v3/objects/tasks$", "after_write": True, "delay_s": 0.8}])
    (outcome,) = executor.execute([action("breakup_task", "101")])
    assert outcome.ok
    calls = wait_for_calls(fake, 2)
    assert sorted(c["path"] for c in calls) == ["/crm/v3/objects/tasks", "/crm/v3/objects/tasks/search"]
    assert len(fake.tasks_for("101")) == 1


@pytest.mark.parametrize("status", [502, 504, 500])
def test_a_lost_answer_to_a_task_create_is_searched_for_not_sent_again(
    fake: FakeHubSpot, executor: HubSpotExecutor, status: int
) -> None:
    ids = seed(fake, 3)
    fake.configure(script=[{"path": "/crm/v3/objects/tasks", "after_write": True, "status": status}])
    assert all(o.ok for o in executor.execute([action("reengage_task", cid) for cid in ids]))
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 1]
    calls = [(c["path"].rsplit("/", 1)[-1], c["status"]) for c in task_api_calls(fake)]
    assert calls == [("create", status), ("search", 200)]
    (search,) = fake.api_calls("POST", "/search")
    assert [g["filters"] for g in search["body"]["filterGroups"]] == [
        [{"propertyName": "hs_task_body", "operator": "CONTAINS_TOKEN", "value": marker}]
        for marker in sorted(task_marker(action("reengage_task", cid)["id"]) for cid in ids)
    ]


def test_tasks_a_207_says_nothing_about_are_searched_for_together(
    fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    ids = seed(fake, 3)
    silent = {"status": "COMPLETE", "results": [], "errors": []}  # created, but the answer names none of them
    fake.configure(script=[{"path": "/crm/v3/objects/tasks/batch/create", "after_write": True, "status": 207,
                            "body": silent}])  # fmt: skip
    slept: list[float] = []
    with HubSpotExecutor(client(server, conn, sleep=slept.append), conn, clock=lambda: NOW_S) as ex:
        assert all(o.ok for o in ex.execute([action("breakup_task", cid) for cid in ids]))
    assert [len(fake.tasks_for(cid)) for cid in ids] == [1, 1, 1]
    assert [c["path"].rsplit("/", 1)[-1] for c in task_api_calls(fake)] == ["create", "search"]
    assert slept == [0.0]  # one wait for the index, not one per task


def test_a_create_refused_before_any_write_is_sent_again_after_the_search(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 503, "path": "/crm/v3/objects/tasks$"}])
    assert executor.execute([action("breakup_task", "101")])[0].ok
    assert [(c["path"], c["status"]) for c in task_api_calls(fake)] == [
        ("/crm/v3/objects/tasks", 503),
        ("/crm/v3/objects/tasks/search", 200),
        ("/crm/v3/objects/tasks", 201),
    ]
    assert len(fake.tasks_for("101")) == 1


def test_a_429_on_a_task_create_is_sent_again_without_a_search(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    fake.configure(script=[{"status": 429, "retry_after": "0", "path": "/crm/v3/objects/tasks$"}])
    assert executor.execute([action("breakup_task", "101")])[0].ok
    assert [(c["path"], c["status"]) for c in task_api_calls(fake)] == [
        ("/crm/v3/objects/tasks", 429),
        ("/crm/v3/objects/tasks", 201),
    ]


def test_the_search_waits_for_the_index_to_see_a_doubtful_create(
    fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    seed(fake, 1)
    fake.configure(search_lag_s=0.4, script=[{"path": "/crm/v3/objects/tasks$", "after_write": True, "status": 502}])
    with HubSpotExecutor(client(server, conn, search_delay_s=0.6), conn, clock=lambda: NOW_S) as slow:
        assert slow.execute([action("breakup_task", "101")])[0].ok
    create, search = task_api_calls(fake)
    assert search["path"].endswith("/search") and search["at"] - create["at"] >= 0.6
    assert len(fake.tasks_for("101")) == 1


def test_a_drain_that_gave_up_on_a_doubtful_create_searches_before_creating_again(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(
        script=[{"path": "/crm/v3/objects/tasks$", "after_write": True, "status": 504}],
        fail_paths={"/crm/v3/objects/tasks/search": 503},
    )
    with pytest.raises(TransientCrmError):
        executor.execute([action("breakup_task", "101")])
    assert len(task_creates(fake)) == 1  # never sent again while the search could not tell
    fake.configure(fail_paths={})
    assert executor.execute([action("breakup_task", "101")])[0].ok
    assert len(task_creates(fake)) == 1 and len(fake.tasks_for("101")) == 1
    assert task_api_calls(fake)[-1]["path"] == "/crm/v3/objects/tasks/search"


def test_a_refused_search_fails_the_doubtful_task_instead_of_doubling_it(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(
        script=[
            {"path": "/crm/v3/objects/tasks$", "after_write": True, "status": 502},
            {"path": "/crm/v3/objects/tasks/search", "status": 400},
        ]
    )
    (outcome,) = executor.execute([action("breakup_task", "101")])
    assert not outcome.ok and "may exist" in outcome.detail
    assert len(fake.tasks_for("101")) == 1


def test_a_rerun_does_not_unsubscribe_again(fake: FakeHubSpot, executor: HubSpotExecutor) -> None:
    seed(fake, 1)
    fake.configure(fail_paths={"/crm/v3/objects/contacts/101": 503})
    with pytest.raises(TransientCrmError):
        executor.execute([action("suppress", "101")])
    fake.configure(fail_paths={})
    assert executor.execute([action("suppress", "101")])[0].ok
    assert fake.unsubscribed == ["lead101@example.com"]
    assert fake.contact("101")["pruner_do_not_contact"] == "true"


# -- reads for the inbound side --------------------------------------------------------------


def test_get_object_and_associated_ids(fake: FakeHubSpot, server: FakeHubSpotServer, conn: redis.Redis) -> None:
    seed(fake, 1)
    for i in range(4):
        fake.add_deal(f"x{i}", "101")
    fake.configure(page_size=2)
    with client(server, conn) as c:
        record = c.get_object("contacts", "101", ["email", "hs_lead_status"], ["deals"])
        assert record["properties"]["hs_lead_status"] == "OPEN"
        assert len(record["associations"]["deals"]["results"]) == 5
        assert sorted(c.associated_ids("contacts", "101", "deals")) == ["d101", "x0", "x1", "x2", "x3"]
        assert sorted(c.batch_associated_ids("contacts", ["101", "999"], "deals")["101"]) == [
            "d101",
            "x0",
            "x1",
            "x2",
            "x3",
        ]
        with pytest.raises(HubSpotNotFound):
            c.get_object("contacts", "999", [], [])
        with pytest.raises(HubSpotNotFound):
            c.associated_ids("contacts", "999", "deals")
    assert len(fake.api_calls("GET", "/101/associations/deals")) == 3  # paged


# -- the shared rate limiter -----------------------------------------------------------------

LIMIT, WINDOW = 5, 0.5


def assert_within_limit(times: list[float], limit: int = LIMIT, window: float = WINDOW) -> None:
    times = sorted(times)
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= window - 1e-6, f"more than {limit} admissions within {window} s"


def test_the_limiter_is_shared_by_threads(conn: redis.Redis) -> None:
    limiter = RateLimiter(conn, limit=LIMIT, window_s=WINDOW, key="pruner:ratelimit:threads", margin_s=0)
    times: list[float] = []

    def spend() -> None:
        for _ in range(6):
            times.append(limiter.acquire())

    threads = [threading.Thread(target=spend) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(times) == 18
    assert_within_limit(times)
    assert max(times) - min(times) >= (18 // LIMIT - 1) * WINDOW  # it did hold them back


CHILD = """
import sys, redis
from worker.crm.ratelimit import RateLimiter
conn = redis.Redis.from_url(sys.argv[1])
limit, window = int(sys.argv[2]), float(sys.argv[3])
limiter = RateLimiter(conn, limit=limit, window_s=window, key="pruner:ratelimit:procs", margin_s=0)
for _ in range(12):
    conn.rpush("admitted", repr(limiter.acquire()))
"""


def test_the_limiter_is_shared_by_processes(conn: redis.Redis) -> None:
    args = [sys.executable, "-c", CHILD, REDIS_URL, str(LIMIT), str(WINDOW)]
    procs = [subprocess.Popen(args, cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=30) for p in procs] == [0, 0]
    times = [float(t) for t in conn.lrange("admitted", 0, -1)]
    assert len(times) == 24
    assert_within_limit(times)


def test_a_429_holds_back_every_user_of_the_limiter(conn: redis.Redis) -> None:
    one = RateLimiter(conn, limit=100, window_s=1, key="pruner:ratelimit:block", margin_s=0)
    other = RateLimiter(conn, limit=100, window_s=1, key="pruner:ratelimit:block", margin_s=0)
    one.block(0.3)
    started = time.monotonic()
    other.acquire()
    assert time.monotonic() - started >= 0.25
    one.block(5)
    with pytest.raises(TimeoutError):
        other.acquire(timeout_s=0.1)


def test_actions_it_cannot_carry_out_fail_with_a_reason(executor: HubSpotExecutor) -> None:
    odd = {**action("mark_lost", "101"), "kind": "send_flowers"}
    foreign = {**action("mark_lost", "102"), "crm": "salesforce"}
    outcomes = executor.execute([odd, foreign])
    assert [(o.ok, o.detail) for o in outcomes] == [
        (False, "unknown action kind 'send_flowers'"),
        (False, "not a HubSpot action (crm 'salesforce')"),
    ]


UNSUB = "/communication-preferences/v4/statuses/"


@pytest.mark.parametrize("lost", [{"status": 504}, {"status": 502, "delay_s": 0.05}])
def test_an_unsubscribe_whose_answer_was_lost_is_not_sent_again(
    fake: FakeHubSpot, executor: HubSpotExecutor, lost: dict[str, Any]
) -> None:
    # The gateway answered 5xx after HubSpot had unsubscribed the person (the chaos suite saw
    # these retried into a second unsubscribe): the retry reads the status first.
    seed(fake, 1)
    fake.configure(script=[{"path": UNSUB, "after_write": True, **lost}])
    assert executor.execute([action("suppress", "101")])[0].ok
    assert fake.unsubscribed == ["lead101@example.com"]
    posts = [c for c in fake.api_calls() if UNSUB in c["path"]]
    assert [(c["method"], c["status"]) for c in posts] == [("POST", lost["status"]), ("GET", 200)]


def test_an_unsubscribe_refused_with_429_is_retried_without_a_status_read(
    fake: FakeHubSpot, executor: HubSpotExecutor
) -> None:
    seed(fake, 1)
    fake.configure(script=[{"path": UNSUB, "status": 429, "retry_after": "0"}, {"path": UNSUB, "status": 503}])
    assert executor.execute([action("suppress", "101")])[0].ok
    calls = [(c["method"], c["status"]) for c in fake.api_calls() if UNSUB in c["path"]]
    # 429: nothing happened, send again; 503 (before anything, but a client cannot know): read first.
    assert calls == [("POST", 429), ("POST", 503), ("GET", 200), ("POST", 200)]
    assert fake.unsubscribed == ["lead101@example.com"]
