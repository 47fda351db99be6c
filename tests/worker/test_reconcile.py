"""Reconciliation reads back the engagements HubSpot changed lately; what webhooks missed is added and counted.

The fake HubSpot over real HTTP, the real Redis (DB 12 of the test Redis).
"""

from __future__ import annotations

import redis

from rules.events import format_ms as iso
from rules.hubspot_history import Mapped, engagement_record_events
from rules.hubspot_map import HubSpotMapping
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import CONNECTED, NO_ANSWER
from worker.crm.hubspot_backfill import HubSpotHistory
from worker.crm.hubspot_client import HubSpotClient
from worker.decide import Decider
from worker.metrics import RECONCILED_KEY
from worker.policyfile import default_policy
from worker.reconcile import CURSOR_KEY, reconcile_hubspot
from worker.store import LeadStore

NOW_MS = 1_790_000_000_000  # the run's clock: nothing here depends on today
MIN = 60_000
P = default_policy()
MAPPING = HubSpotMapping()


def call(fake: FakeHubSpot, call_id: str, at_ms: int, modified_ms: int, disposition: str = NO_ANSWER) -> None:
    fake.add_engagement("calls", call_id, ["501"], hs_timestamp=iso(at_ms), hs_call_direction="OUTBOUND",
                        hs_call_disposition=disposition, hs_lastmodifieddate=iso(modified_ms))  # fmt: skip


def run(server: FakeHubSpotServer, conn: redis.Redis, now_ms: int) -> dict[str, int]:
    history = HubSpotHistory(HubSpotClient(server.url, TOKEN, None, backoff_base_s=0.01, backoff_cap_s=0.05))
    result = reconcile_hubspot(conn, history, LeadStore(conn), Decider(P, now_ms), MAPPING, now_ms)
    return result.added


def test_engagements_whose_webhooks_never_came_are_recovered_and_counted(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    fake = server.fake
    fake.add_contact("501")
    for n in range(3):
        call(fake, f"k{n}", NOW_MS - (40 - n) * MIN, NOW_MS - (40 - n) * MIN)
    # The webhook for k0 did arrive: the store has its event, mapped as the webhook path maps it.
    delivered = Mapped()
    record = {"id": "k0", "properties": fake.objects["calls"]["k0"]}
    engagement_record_events("calls", record, ["501"], MAPPING, delivered)
    LeadStore(conn).apply_batch([item.event for item in delivered.events], Decider(P, NOW_MS))

    assert run(server, conn, NOW_MS) == {"calls": 2}  # k1, k2: missed
    assert conn.hgetall(RECONCILED_KEY) == {b"calls": b"2"}
    assert int(conn.get(CURSOR_KEY) or 0) == NOW_MS - MIN  # a minute of slack for the search index
    history = LeadStore(conn).history("hubspot", "501") or []
    assert len(history) == 3

    # Fifteen minutes later: nothing new, although the overlap reads the last changes again.
    later = NOW_MS + 15 * MIN
    assert sum(run(server, conn, later).values()) == 0
    # k1's disposition is corrected to connected in HubSpot, and that webhook is lost too.
    call(fake, "k1", NOW_MS - 39 * MIN, later + 2 * MIN, disposition=CONNECTED)
    assert run(server, conn, later + 15 * MIN)["calls"] == 1  # the new version, counted once
    assert conn.hgetall(RECONCILED_KEY) == {b"calls": b"3"}


def test_a_first_run_looks_back_an_hour_and_no_further(server: FakeHubSpotServer, conn: redis.Redis) -> None:
    fake = server.fake
    fake.add_contact("501")
    call(fake, "old", NOW_MS - 3 * 60 * MIN, NOW_MS - 3 * 60 * MIN)  # a backfill's business, not this one's
    call(fake, "new", NOW_MS - 30 * MIN, NOW_MS - 30 * MIN)
    assert run(server, conn, NOW_MS)["calls"] == 1
    assert len(LeadStore(conn).history("hubspot", "501") or []) == 1  # "new" only
