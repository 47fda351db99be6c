"""A HubSpot break-up task carries the owner of its contact: gunicorn + a real `pruner worker` + the fake HubSpot."""

from __future__ import annotations

import pytest
import redis

from tests.fakes.hubspot import FakeHubSpot, FakeHubSpotServer
from tests.integration.support import wait_until
from tests.integration.test_hubspot_actions import assert_all_done, hubspot, post, pushed_back, running, server

pytestmark = pytest.mark.integration
__all__ = ["hubspot", "server"]  # fixtures, imported for pytest

REP, FALLBACK = "61234567", "60000001"


def test_a_breakup_task_is_assigned_to_the_contacts_owner(
    redis_db: redis.Redis, server: FakeHubSpotServer, hubspot: FakeHubSpot
) -> None:
    hubspot.configure(owners=[REP, FALLBACK])
    hubspot.add_contact("8101", "owned@example.com", hubspot_owner_id=REP)
    hubspot.add_contact("8102", "orphan@example.com")  # nobody owns this contact
    with running(server, workers=1, HUBSPOT_FALLBACK_OWNER_ID=FALLBACK) as url:
        post(url, pushed_back("8101") + pushed_back("8102"))
        wait_until(lambda: bool(hubspot.tasks_for("8101") and hubspot.tasks_for("8102")), seconds=40)
        assert_all_done(redis_db)
    (task,) = hubspot.tasks_for("8101")
    assert task["hubspot_owner_id"] == REP
    assert task["hs_task_subject"] == "Send a polite break-up message: follow-up meetings pushed back 2 times"
    assert "pushed_back rule fired" in task["hs_task_body"] and "door open" in task["hs_task_body"]
    (orphan,) = hubspot.tasks_for("8102")
    assert orphan["hubspot_owner_id"] == FALLBACK
