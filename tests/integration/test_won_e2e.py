"""WON end to end: gunicorn, two real workers and the clock, the fake HubSpot over HTTP."""

from __future__ import annotations

from datetime import timedelta

import redis

from tests.fakes.hubspot import FakeHubSpot, FakeHubSpotServer
from tests.helpers import event
from tests.integration.support import get_lead, wait_until
from tests.integration.test_hubspot_actions import (
    T0,
    assert_all_done,
    lead_state,
    outbox,
    post,
    pushed_back,
    running,
    seed,
)
from tests.integration.test_hubspot_actions import (
    server as server,  # noqa: F401  (fixture)
)
from worker.actions import done_key, lock_key


def won(lead: str, at_days: float = 0, deal: str | None = None) -> dict[str, object]:
    return event(
        "deal_updated",
        lead,
        at=T0 + timedelta(days=at_days),
        data={"deal_id": deal or f"deal-{lead}", "stage": "closedwon"},
    )


def test_a_won_contact_followed_by_fourteen_unanswered_emails_stays_won_and_hubspot_is_not_written(
    redis_db: redis.Redis, server: FakeHubSpotServer
) -> None:
    hubspot: FakeHubSpot = server.fake
    lead = "7301"
    seed(hubspot, [lead])
    with running(server) as url:
        # Won three days ago, then a sequence that kept mailing the customer (the case).
        emails = [event("email_sent", lead, at=T0 + timedelta(hours=1 + 4 * i)) for i in range(14)]
        post(url, [won(lead), *emails])
        wait_until(lambda: lead_state(url, lead) == "WON")
        assert_all_done(redis_db)
        doc = get_lead(url, lead).json()
        assert doc["loss_reason"] is None and [d["rule"] for d in doc["decisions"]] == ["deal_won"]
        assert doc["counters"]["emails_sent"] == 14
    assert hubspot.api_calls() == []  # no task, no lost status, nothing
    assert hubspot.contact(lead)["hs_lead_status"] == "OPEN"


def test_a_break_up_task_queued_before_the_deal_was_won_is_dropped_at_drain_time(
    redis_db: redis.Redis, server: FakeHubSpotServer
) -> None:
    hubspot: FakeHubSpot = server.fake
    lead = "7302"
    seed(hubspot, [lead])
    with running(server) as url:
        redis_db.set(lock_key("hubspot"), "held-by-test", px=60_000)  # a long drain elsewhere: actions wait
        post(url, pushed_back(lead))
        wait_until(lambda: [a["kind"] for a in outbox(redis_db)] == ["breakup_task"])
        breakup_id = outbox(redis_db)[0]["id"]
        post(url, [won(lead, at_days=1)])
        wait_until(lambda: lead_state(url, lead) == "WON")
        redis_db.delete(lock_key("hubspot"))
        wait_until(lambda: outbox(redis_db) == [], seconds=30)
        assert_all_done(redis_db)
    assert hubspot.tasks_for(lead) == [] and hubspot.api_calls() == []
    assert redis_db.sismember(done_key("hubspot"), breakup_id)  # dropped for good, not left pending


def test_a_new_open_deal_brings_the_customer_back_and_the_rules_act_again(
    redis_db: redis.Redis, server: FakeHubSpotServer
) -> None:
    hubspot: FakeHubSpot = server.fake
    lead = "7303"
    seed(hubspot, [lead])
    with running(server) as url:
        post(url, [won(lead, at_days=-2)])
        wait_until(lambda: lead_state(url, lead) == "WON")
        upsell = event(
            "deal_updated",
            lead,
            at=T0 - timedelta(days=1),
            data={"deal_id": "upsell-1", "stage": "appointmentscheduled"},
        )
        post(url, [upsell, *pushed_back(lead)])
        wait_until(lambda: lead_state(url, lead) == "BREAKUP_DUE")
        wait_until(lambda: len(hubspot.tasks_for(lead)) == 1, seconds=30)
        assert_all_done(redis_db)
        rules = [d["rule"] for d in get_lead(url, lead).json()["decisions"]]
    assert rules == ["deal_won", "deal_opened", "pushed_back"]
