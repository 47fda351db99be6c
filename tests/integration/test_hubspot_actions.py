"""Decisions reach HubSpot: gunicorn + two real `pruner worker` processes + the fake HubSpot server.

The fake runs in this process (a thread); the workers call it over HTTP with
PRUNER_DRY_RUN=0, as they would call api.hubapi.com. Redis is DB 15, flushed before
and after each test (`redis_db` from conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import NO_ANSWER
from tests.helpers import batch_body, event, signed_headers
from tests.integration.support import (
    BIN,
    ROOT,
    base_env,
    days_past_grace,
    drained,
    get_lead,
    loud_day,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from worker.actions import dead_key, done_key, lock_key
from worker.crm.progress import PROGRESS_KEY
from worker.keys import outbox_key
from worker.metrics import RECONCILED_KEY
from worker.store import LeadStore
from worker.taskcap import CAP_PREFIX, deferred_key, release_due
from worker.upgrades import BREAKUP_CLOCK_MARKER, DRY_RUN_MARK

pytestmark = pytest.mark.integration
RATE = (10, 10.0)  # HUBSPOT_RATE_LIMIT for the workers, and the fake's own limit
T0 = datetime.now(tz=UTC) - timedelta(days=3)


@pytest.fixture
def server() -> Iterator[FakeHubSpotServer]:
    with FakeHubSpotServer() as running_server:
        yield running_server


@pytest.fixture
def hubspot(server: FakeHubSpotServer) -> FakeHubSpot:
    return server.fake


def live_env(server: FakeHubSpotServer, **extra_env: str) -> dict[str, str]:
    """The environment of a live deployment (not a dry run) whose HubSpot is the fake."""
    return base_env(
        **{
            "PRUNER_DRY_RUN": "0",
            "HUBSPOT_ACCESS_TOKEN": TOKEN,
            "HUBSPOT_API_BASE": server.url,
            "HUBSPOT_RATE_LIMIT": f"{RATE[0]}/{RATE[1]:g}",
            "PRUNER_SUPPRESSION_KEY": "integration-suppression-key",
            **extra_env,  # a test may override any of these (a dry run first)
        }
    )


@contextmanager
def running(server: FakeHubSpotServer, workers: int = 2, **extra_env: str) -> Iterator[str]:
    """Web + workers + clock talking to the fake HubSpot for real; yield the web URL."""
    env = live_env(server, **extra_env)
    web, url = start_web(env)
    procs: list[subprocess.Popen[bytes]] = [start_worker(env) for _ in range(workers)]
    # The clock too, as the Procfile runs it: its watchdog drains an outbox nobody drains.
    procs.append(subprocess.Popen([str(BIN / "pruner"), "clock"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    try:
        wait_http(f"{url}/healthz")
        yield url
    finally:
        for proc in [web, *procs]:
            stop(proc)


def post(url: str, events: list[dict[str, Any]]) -> None:
    body = batch_body(events)
    response = requests.post(f"{url}/webhooks/events", data=body, headers=signed_headers(body), timeout=10)
    assert response.status_code == 202, response.text


def lead_state(url: str, lead: str) -> str | None:
    response = get_lead(url, lead)
    return str(response.json()["state"]) if response.status_code == 200 else None


def outbox(conn: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in conn.lrange(outbox_key("hubspot"), 0, -1)]


def seed(fake: FakeHubSpot, leads: list[str]) -> None:
    for lead in leads:
        fake.add_contact(lead, f"person{lead}@example.com", hs_lead_status="OPEN")
        fake.add_deal(f"deal-{lead}", lead)


def said_no_twice(lead: str) -> list[dict[str, Any]]:
    return [event("not_interested", lead, at=T0), event("not_interested", lead, at=T0 + timedelta(days=1))]


def pushed_back(lead: str) -> list[dict[str, Any]]:
    return [
        event("meeting_rescheduled", lead, at=T0 + timedelta(hours=h), data={"first_meeting": h == 0}) for h in range(3)
    ]


def is_lost_in_hubspot(fake: FakeHubSpot, lead: str) -> bool:
    return fake.contact(lead).get("hs_lead_status") == "UNQUALIFIED" and (
        fake.deal(f"deal-{lead}")["dealstage"] == "closedlost"
    )


def writes(fake: FakeHubSpot) -> list[dict[str, Any]]:
    return [c for c in fake.api_calls() if c["method"] == "PATCH" or c["path"].endswith("/batch/update")]


def assert_under_rate_limit(fake: FakeHubSpot) -> None:
    calls = fake.api_calls()
    assert [c for c in calls if c["status"] == 429] == []
    times = sorted(c["at"] for c in calls)
    limit, window = RATE
    for i in range(len(times) - limit):
        assert times[i + limit] - times[i] >= window, f"more than {limit} requests reached HubSpot within {window} s"


def assert_all_done(conn: redis.Redis) -> None:
    wait_until(drained(conn), seconds=30)
    assert outbox(conn) == []
    assert conn.lrange(dead_key("hubspot"), 0, -1) == []


def test_forty_lost_leads_reach_hubspot_in_a_few_batch_calls(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    leads = [str(5000 + i) for i in range(40)]
    seed(hubspot, leads)
    hubspot.configure(rate_limit=RATE[0], window_s=RATE[1])
    with running(server) as url:
        for lead in leads:
            # One webhook per lead, spread over ~6 s as they would happen: the first leads each
            # get a drain of their own until the 10-per-10-s budget runs out; the rest pile up
            # meanwhile and must go out together once it refills.
            post(url, said_no_twice(lead))
            time.sleep(0.15)
        wait_until(lambda: all(is_lost_in_hubspot(hubspot, lead) for lead in leads), seconds=40)
        assert_all_done(redis_db)
    assert all(hubspot.contact(lead)["pruner_lost_reason"] == "not_interested" for lead in leads)
    assert all(hubspot.deal(f"deal-{lead}")["closed_lost_reason"] == "not_interested" for lead in leads)
    written = writes(hubspot)
    assert len(written) <= len(leads) // 4, [(c["method"], c["path"]) for c in written]
    assert max(len(c["body"].get("inputs", [])) for c in written) > 10  # coalesced into batch calls
    assert len(hubspot.api_calls()) > RATE[0]  # so the budget was spent, and waited for
    assert_under_rate_limit(hubspot)


def test_every_action_lands_exactly_once_through_injected_503s(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    breakups = [str(6000 + i) for i in range(10)]
    losses = [str(6100 + i) for i in range(10)]
    seed(hubspot, breakups + losses)
    # Seed 1: the first draw fails, so at least one 503 is certain; then 30% at random.
    hubspot.configure(fail_rate=0.3, seed=1, rate_limit=RATE[0], window_s=RATE[1])
    with running(server) as url:
        events = [e for lead in breakups for e in pushed_back(lead)]
        post(url, events + [e for lead in losses for e in said_no_twice(lead)])

        def landed() -> bool:
            return all(hubspot.tasks_for(lead) for lead in breakups) and all(
                is_lost_in_hubspot(hubspot, lead) for lead in losses
            )

        wait_until(landed, seconds=40)
        assert_all_done(redis_db)
    assert [len(hubspot.tasks_for(lead)) for lead in breakups] == [1] * len(breakups)
    assert all(hubspot.tasks_for(lead) == [] for lead in losses)
    subjects = {t["hs_task_subject"] for lead in breakups for t in hubspot.tasks_for(lead)}
    assert subjects == {"Send a polite break-up message: follow-up meetings pushed back 2 times"}
    assert any(c["status"] == 503 for c in hubspot.api_calls())
    assert_under_rate_limit(hubspot)


def test_do_not_contact_cancels_a_queued_breakup_task(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    lead = "7001"
    seed(hubspot, [lead])
    with running(server) as url:
        # Hold the drain lock, as a long drain elsewhere would: actions queue up but none run yet.
        redis_db.set(lock_key("hubspot"), "held-by-test", px=60_000)
        post(url, pushed_back(lead))
        wait_until(lambda: [a["kind"] for a in outbox(redis_db)] == ["breakup_task"])
        breakup_id = outbox(redis_db)[0]["id"]
        post(url, [event("do_not_contact", lead, at=T0 + timedelta(days=1), data={"channels": ["all"]})])
        wait_until(lambda: lead_state(url, lead) == "SUPPRESSED")
        wait_until(lambda: [a["kind"] for a in outbox(redis_db)] == ["breakup_task", "suppress"])
        assert hubspot.api_calls() == []
        redis_db.delete(lock_key("hubspot"))
        wait_until(lambda: hubspot.contact(lead).get("pruner_do_not_contact") == "true", seconds=30)
        assert_all_done(redis_db)
    assert hubspot.tasks_for(lead) == []
    assert redis_db.sismember(done_key("hubspot"), breakup_id)  # cancelled for good, not left pending
    assert hubspot.unsubscribed == [f"person{lead}@example.com"]
    assert not [c for c in hubspot.api_calls() if "/tasks" in c["path"]]


def test_an_erased_lead_leaves_no_id_in_the_drain_records(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    from tests.integration.test_gdpr_e2e import dump

    lead = "4242424242"
    seed(hubspot, [lead])
    with running(server, workers=1) as url:
        post(url, said_no_twice(lead))
        wait_until(lambda: is_lost_in_hubspot(hubspot, lead), seconds=30)
        assert_all_done(redis_db)
        assert any(lead.encode() in m for m in redis_db.smembers(done_key("hubspot")))  # the drain's marker
        assert redis_db.zcard(PROGRESS_KEY) > 0  # hashes of its action's steps: guessable ids, so personal
        post(url, [event("erasure_requested", lead, at=T0 + timedelta(days=2))])
        wait_until(lambda: get_lead(url, lead).json().get("erased") is True)
        wait_until(drained(redis_db))
    assert lead.encode() not in dump(redis_db)
    assert redis_db.zcard(PROGRESS_KEY) == 0


def test_a_drain_killed_after_hubspot_unsubscribed_never_unsubscribes_again(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    lead = "8101"
    seed(hubspot, [lead])
    # HubSpot carries the unsubscribe out, then its answer takes 20 s: the worker is killed meanwhile,
    # between the CRM's effect and its own bookkeeping.
    path = f"/communication-preferences/v4/statuses/person{lead}@example.com/unsubscribe-all"
    hubspot.configure(script=[{"path": path + "$", "after_write": True, "delay_s": 20}])
    env = base_env(
        PRUNER_DRY_RUN="0",
        HUBSPOT_ACCESS_TOKEN=TOKEN,
        HUBSPOT_API_BASE=server.url,
        PRUNER_SUPPRESSION_KEY="integration-suppression-key",
    )
    web, url = start_web(env)
    clock = subprocess.Popen([str(BIN / "pruner"), "clock"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    first = start_worker(env)
    second = None
    try:
        wait_http(f"{url}/healthz")
        post(url, [event("do_not_contact", lead, at=T0, data={"channels": ["all"]})])
        wait_until(lambda: hubspot.unsubscribed == [f"person{lead}@example.com"], seconds=30)
        first.kill()  # SIGKILL: no finally, no bookkeeping, its drain job lost with it
        first.wait()
        killed_at = time.monotonic()
        second = start_worker(env)
        # No new event calls a drain: the clock's watchdog must see the outbox nobody drains
        # once the dead drain's lock has expired (15 s), not after the old 10 minutes.
        wait_until(lambda: hubspot.contact(lead).get("pruner_do_not_contact") == "true", seconds=90)
        recovered = time.monotonic() - killed_at
        wait_until(lambda: outbox(redis_db) == [], seconds=30)
    finally:
        for proc in (web, clock, first, second):
            if proc is not None:
                stop(proc)
    assert hubspot.unsubscribed == [f"person{lead}@example.com"]  # once, though the first answer was lost
    looked = [c for c in hubspot.api_calls() if c["method"] == "GET" and c["path"] == path]
    assert len(looked) == 1  # the second drain asked HubSpot instead of sending it again
    # Lock TTL 15 s + watchdog every 15 s + queue latency: about 30 s; the promise is a minute.
    assert recovered < 60, f"the dead drain held the outbox for {recovered:.0f} s"


def silent_for_months(lead: str) -> list[dict[str, Any]]:
    """Fifteen unanswered emails three months ago: a break-up long due (a backfill, an outage).

    On a non-quiet day: sent on a holiday they would not count as silence (this failed on
    2026-12-06, ninety days after Labor Day).
    """
    long_ago = loud_day(datetime.now(tz=UTC), 90, 1)
    return [event("email_sent", lead, at=long_ago + timedelta(minutes=i)) for i in range(15)]


def test_a_lead_found_silent_months_late_gets_its_break_up_before_it_is_lost(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    # Guardrail 7: fifteen unanswered emails from three months ago (a backfill, an outage) mean
    # a break-up task now, and LOST only 7 business days after HubSpot has the task.
    lead = "7101"
    seed(hubspot, [lead])
    emails = silent_for_months(lead)

    def sweep(days: int) -> None:
        when = (datetime.now(tz=UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        command = [str(BIN / "pruner"), "sweep", "--now", when, "--commit-future"]
        subprocess.run(command, cwd=ROOT, env=live_env(server), check=True, capture_output=True, timeout=60)

    with running(server, workers=1) as url:  # the task clock is on by default
        post(url, emails)
        wait_until(lambda: len(hubspot.tasks_for(lead)) == 1, seconds=30)
        wait_until(drained(redis_db), seconds=30)  # the task's breakup_task_created is applied too
        assert lead_state(url, lead) == "BREAKUP_DUE"  # not LOST, though the old grace ended long ago
        history = LeadStore(redis_db).history("hubspot", lead) or []
        assert [e.type.value for e in history].count("breakup_task_created") == 1
        sweep(days=3)
        assert lead_state(url, lead) == "BREAKUP_DUE" and not is_lost_in_hubspot(hubspot, lead)
        sweep(days=days_past_grace(datetime.now(tz=UTC), 7))  # whatever the weekday and the season
        assert lead_state(url, lead) == "LOST"
        wait_until(lambda: is_lost_in_hubspot(hubspot, lead), seconds=30)
        assert_all_done(redis_db)
    assert len(hubspot.tasks_for(lead)) == 1


def test_leads_lost_before_the_task_clock_was_switched_on_stay_lost_and_nothing_is_sent_again(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    # Review finding 1, through real processes: a store written with the clock off (as every
    # version before this one ran), then the first start of workers with it on.
    lead = "7151"
    seed(hubspot, [lead])
    with running(server, workers=1, PRUNER_BREAKUP_TASK_CLOCK="0") as url:
        post(url, silent_for_months(lead))
        wait_until(lambda: is_lost_in_hubspot(hubspot, lead), seconds=30)  # lost by a grace from the decision
        assert_all_done(redis_db)
        before = get_lead(url, lead).json()["decisions"]
    sent = [c for c in hubspot.api_calls() if c["method"] != "GET"]
    with running(server, workers=1) as url:
        wait_until(drained(redis_db), seconds=30)  # the upgrade's task records are applied
        post(url, [event("email_sent", lead, at=datetime.now(tz=UTC))])  # the lead is evaluated again
        wait_until(drained(redis_db), seconds=30)
        # Without the upgrade it came back to BREAKUP_DUE, waiting for a task never to be sent.
        assert lead_state(url, lead) == "LOST"
        assert get_lead(url, lead).json()["decisions"] == before
        assert_all_done(redis_db)
    assert [c for c in hubspot.api_calls() if c["method"] != "GET"] == sent and hubspot.tasks_for(lead) == []


def test_going_live_after_a_dry_run_sends_the_break_up_the_dry_run_only_showed(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    # Review finding 3: the README says to start with a dry run. Its break-ups were never sent
    # once live, and its leads stayed lost without one.
    lead = "7161"
    seed(hubspot, [lead])
    with running(server, workers=1, PRUNER_DRY_RUN="1") as url:
        post(url, silent_for_months(lead))
        wait_until(drained(redis_db), seconds=30)
        assert lead_state(url, lead) == "LOST"  # in a dry run the grace runs from the decision
    assert [c for c in hubspot.api_calls() if c["method"] != "GET"] == []
    with running(server, workers=1) as url:
        # The first live worker makes the dry run's leads due; the next sweep acts for real.
        wait_until(lambda: not redis_db.exists(DRY_RUN_MARK) and bool(redis_db.exists(BREAKUP_CLOCK_MARKER)))
        command = [str(BIN / "pruner"), "sweep"]
        subprocess.run(command, cwd=ROOT, env=live_env(server), check=True, capture_output=True, timeout=60)
        wait_until(lambda: len(hubspot.tasks_for(lead)) == 1, seconds=30)
        wait_until(drained(redis_db), seconds=30)
        assert lead_state(url, lead) == "BREAKUP_DUE"  # its grace runs from the task just created
        assert not is_lost_in_hubspot(hubspot, lead)
        assert_all_done(redis_db)
    assert len(hubspot.tasks_for(lead)) == 1


def test_an_owner_gets_at_most_the_daily_budget_of_tasks_the_rest_wait(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    # The roll-out guard: four stale leads of one rep, a budget of two tasks a day.
    leads = [str(7200 + i) for i in range(4)]
    for lead in leads:
        hubspot.add_contact(lead, f"person{lead}@example.com", hs_lead_status="OPEN", hubspot_owner_id="9001")
    policy = tmp_path / "policy.yaml"
    policy.write_text("guardrails:\n  max_tasks_per_owner_per_day: 2\n")
    with running(server, workers=1, PRUNER_POLICY=str(policy)) as url:
        post(url, [e for lead in leads for e in pushed_back(lead)])
        wait_until(lambda: sum(len(hubspot.tasks_for(lead)) for lead in leads) == 2, seconds=30)
        wait_until(lambda: redis_db.zcard(deferred_key("hubspot")) == 2, seconds=30)
        wait_until(drained(redis_db), seconds=30)
        assert outbox(redis_db) == []
        assert {t["hubspot_owner_id"] for lead in leads for t in hubspot.tasks_for(lead)} == {"9001"}
        # Tomorrow: a fresh budget (a new day's counter) and the clock's watchdog releasing the two.
        redis_db.delete(*redis_db.keys(CAP_PREFIX + "*"))
        assert release_due(redis_db, "hubspot", time.time() + 86_400) == 2
        wait_until(lambda: [len(hubspot.tasks_for(lead)) for lead in leads] == [1, 1, 1, 1], seconds=40)


def test_reconciliation_recovers_engagements_whose_webhooks_never_came(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    # Three calls logged in HubSpot in the last half hour, the contact's opt-out and its deal won:
    # their webhooks were lost (never sent).
    lead = "7301"
    seed(hubspot, [lead])

    def ago(minutes: int) -> str:
        return (datetime.now(tz=UTC) - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    for n in range(3):
        hubspot.add_engagement("calls", f"lost-{n}", [lead], hs_timestamp=ago(30 - n), hs_call_direction="OUTBOUND",
                               hs_call_disposition=NO_ANSWER, hs_lastmodifieddate=ago(30 - n))  # fmt: skip
    # What the contact and the deal were two days ago (a backfill's business), then the changes.
    hubspot.set_history("contacts", lead, "email", [(f"person{lead}@example.com", ago(2880))])
    hubspot.set_history("contacts", lead, "hs_lead_status", [("OPEN", ago(2880))])
    hubspot.set_history("contacts", lead, "hs_email_optout", [("false", ago(2880)), ("true", ago(20))])
    hubspot.set_history(
        "deals", f"deal-{lead}", "dealstage", [("appointmentscheduled", ago(2880)), ("closedwon", ago(25))]
    )
    with running(server, workers=1, PRUNER_RECONCILE_MINUTES="1"):
        # The clock's first reconciliation runs as it starts: within one interval in any case.
        recovered = {b"calls": b"3", b"contacts": b"1", b"deals": b"1"}
        wait_until(lambda: redis_db.hgetall(RECONCILED_KEY) == recovered, seconds=70)
        history = LeadStore(redis_db).history("hubspot", lead) or []
        assert sorted(e.type.value for e in history) == ["call_attempted"] * 3 + ["deal_updated", "do_not_contact"]
