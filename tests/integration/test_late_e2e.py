"""Late batches and merges over real HTTP, real workers and the fake HubSpot: nothing is sent twice."""

from __future__ import annotations

from datetime import timedelta

import redis

from tests.fakes.hubspot import FakeHubSpot, FakeHubSpotServer
from tests.helpers import event
from tests.integration.support import get_lead, wait_until
from tests.integration.test_hubspot_actions import (
    T0,
    assert_all_done,
    is_lost_in_hubspot,
    lead_state,
    post,
    running,
    said_no_twice,
    seed,
    writes,
)
from tests.integration.test_hubspot_actions import (
    server as server,  # noqa: F401  (fixture)
)
from tests.integration.test_hubspot_inbound_e2e import SECRET as HUBSPOT_SECRET
from tests.integration.test_hubspot_inbound_e2e import hs_event, post_signed


def at(hours: float) -> object:
    return T0 + timedelta(hours=hours)


def test_a_late_batch_that_renumbers_and_moves_the_break_up_sends_no_second_task(
    redis_db: redis.Redis, server: FakeHubSpotServer
) -> None:
    hubspot: FakeHubSpot = server.fake
    lead = "7401"
    seed(hubspot, [lead])
    with running(server) as url:
        post(url, [event("meeting_rescheduled", lead, at=at(h)) for h in (6, 7)])  # pushed back twice
        wait_until(lambda: len(hubspot.tasks_for(lead)) == 1, seconds=30)
        # Late: a "no" twice and a reply before (an episode earlier), and a reschedule that moves
        # pushed_back from hour 7 to hour 6.
        late = [event("not_interested", lead, at=at(h)) for h in (1, 2)] + [event("email_replied", lead, at=at(3))]
        post(url, [*late, event("meeting_rescheduled", lead, at=at(4))])
        wait_until(
            lambda: [d["rule"] for d in get_lead(url, lead).json()["decisions"]][-2:] == ["reply_resets", "pushed_back"]
        )
        assert_all_done(redis_db)
    assert len(hubspot.tasks_for(lead)) == 1
    assert writes(hubspot) == []  # the early LOST is history, not the current state: not written either


def test_a_survivor_is_not_told_again_what_the_merged_record_was_told(
    redis_db: redis.Redis, server: FakeHubSpotServer
) -> None:
    hubspot: FakeHubSpot = server.fake
    merged, survivor = "7402", "7403"
    seed(hubspot, [merged, survivor])
    with running(server, HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET) as url:
        post(url, said_no_twice(merged))
        wait_until(lambda: is_lost_in_hubspot(hubspot, merged), seconds=30)
        assert_all_done(redis_db)
        before = len(writes(hubspot))
        merge = hs_event(
            "contact.merge", int(survivor), 900, primaryObjectId=int(survivor), mergedObjectIds=[int(merged)],
            newObjectId=int(survivor),
        )  # fmt: skip
        assert post_signed(url, [merge]).status_code == 204
        wait_until(lambda: lead_state(url, survivor) == "LOST")
        assert_all_done(redis_db)
    assert len(writes(hubspot)) == before  # the merged record's LOST is not written again to the survivor
    assert hubspot.contact(survivor)["hs_lead_status"] == "OPEN"
