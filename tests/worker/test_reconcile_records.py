"""Reconciliation reads back HubSpot contacts and deals: property changes whose webhooks never came.

The fake HubSpot over real HTTP, the real Redis (DB 12 of the test Redis). A webhook for a
change and the change read back from the property history are one event, in either order.
"""

from __future__ import annotations

import redis

from rules.counters import LeadCounters, fold
from rules.events import format_ms as iso
from rules.hubspot_map import HubSpotMapping, parse_hubspot_batch
from rules.lifecycle import evaluate
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from worker.crm.hubspot_backfill import HubSpotHistory
from worker.crm.hubspot_client import HubSpotClient
from worker.decide import Decider
from worker.hubspot_ops import fetch_events
from worker.metrics import RECONCILED_KEY
from worker.policyfile import default_policy
from worker.reconcile import CURSOR_KEY, reconcile_hubspot
from worker.store import LeadStore

NOW_MS = 1_790_000_000_000  # the run's clock: nothing here depends on today
MIN = 60_000
DAY = 86_400_000
P = default_policy()
# This portal has a "not interested" lead status of its own (HubSpot ships none).
MAPPING = HubSpotMapping(not_interested_lead_statuses=frozenset({"NOT_INTERESTED"}))


def client(server: FakeHubSpotServer) -> HubSpotClient:
    return HubSpotClient(server.url, TOKEN, None, backoff_base_s=0.01, backoff_cap_s=0.05)


def run(server: FakeHubSpotServer, conn: redis.Redis, now_ms: int) -> dict[str, int]:
    history = HubSpotHistory(client(server))
    return reconcile_hubspot(conn, history, LeadStore(conn), Decider(P, now_ms), MAPPING, now_ms).added


def said_no(fake: FakeHubSpot, contact: str, at_ms: int) -> None:
    """A rep sets the contact's lead status to NOT_INTERESTED at `at_ms` (it was NEW ten days before)."""
    fake.add_contact(contact)
    fake.set_history(
        "contacts", contact, "hs_lead_status", [("NEW", iso(at_ms - 10 * DAY)), ("NOT_INTERESTED", iso(at_ms))]
    )


def webhook(conn: redis.Redis, contact: str, name: str, value: str, at_ms: int, event_id: int = 1) -> int:
    """HubSpot's notification of that change (its own eventId), applied as the webhook path applies it."""
    hook = {"subscriptionType": "contact.propertyChange", "objectId": int(contact), "occurredAt": at_ms,
            "eventId": event_id, "subscriptionId": 9, "portalId": 1,
            "propertyName": name, "propertyValue": value}  # fmt: skip
    events = parse_hubspot_batch([hook], NOW_MS, MAPPING).events
    return LeadStore(conn).apply_batch(events, Decider(P, NOW_MS)).added


def counters(conn: redis.Redis, contact: str) -> LeadCounters:
    return fold(LeadStore(conn).history("hubspot", contact) or [])


def test_a_no_and_an_opt_out_whose_webhooks_never_came_are_recovered_and_counted(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    fake = server.fake
    said_no(fake, "601", NOW_MS - 30 * MIN)
    fake.add_contact("602")
    fake.set_history(
        "contacts", "602", "hs_email_optout", [("false", iso(NOW_MS - 9 * DAY)), ("true", iso(NOW_MS - 20 * MIN))]
    )

    assert run(server, conn, NOW_MS) == {"contacts": 2}
    assert conn.hgetall(RECONCILED_KEY) == {b"contacts": b"2"}
    assert counters(conn, "601").not_interested == 1
    # Only the change inside the window: the NEW of ten days ago was a change of its own time.
    assert [e.type.value for e in LeadStore(conn).history("hubspot", "601") or []] == ["not_interested"]
    assert counters(conn, "602").do_not_contact == {"email"}
    assert (LeadStore(conn).state("hubspot", "602") or {}).get("state") == "SUPPRESSED"
    # Read by id with the history of the mapping's properties, 50 a request at most.
    reads = fake.api_calls("POST", "/crm/v3/objects/contacts/batch/read")
    assert len(reads) == 1
    assert "hs_lead_status" in reads[0]["body"]["propertiesWithHistory"]


def test_a_change_the_webhook_delivered_is_a_duplicate_in_either_order(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    at = NOW_MS - 30 * MIN
    said_no(server.fake, "611", at)
    # Webhook first, then reconciliation: nothing recovered, one "no".
    assert webhook(conn, "611", "hs_lead_status", "NOT_INTERESTED", at) == 1
    assert run(server, conn, NOW_MS) == {"contacts": 0}
    once = counters(conn, "611")
    assert once.not_interested == 1
    assert conn.hgetall(RECONCILED_KEY) == {}

    # Reconciliation first, then the webhook (a late redelivery, another eventId): nothing added.
    conn.flushdb()
    assert run(server, conn, NOW_MS) == {"contacts": 1}
    assert webhook(conn, "611", "hs_lead_status", "NOT_INTERESTED", at, event_id=77) == 0
    assert counters(conn, "611") == once


def test_a_no_whose_webhook_time_differs_from_the_version_time_still_counts_once(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    # Should occurredAt ever differ from the version's timestamp, the ids differ; the "no" is a
    # version of one record (its 10-minute slot), of which one counts, in either order.
    at = NOW_MS - 30 * MIN + 1_000
    said_no(server.fake, "651", at)
    assert webhook(conn, "651", "hs_lead_status", "NOT_INTERESTED", at + 250) == 1
    assert run(server, conn, NOW_MS) == {"contacts": 1}  # a second event, stored...
    events = LeadStore(conn).history("hubspot", "651") or []
    assert len(events) == 2
    assert counters(conn, "651").not_interested == 1  # ...that does not count twice
    assert evaluate(events, P, NOW_MS).counters.not_interested == 1  # nor in the replay

    conn.flushdb()
    assert run(server, conn, NOW_MS) == {"contacts": 1}
    assert webhook(conn, "651", "hs_lead_status", "NOT_INTERESTED", at - 250, event_id=3) == 1
    events = LeadStore(conn).history("hubspot", "651") or []
    assert evaluate(events, P, NOW_MS).counters.not_interested == 1


def test_a_deal_won_whose_webhook_never_came_makes_its_contact_won(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    fake = server.fake
    fake.add_contact("621")
    fake.add_deal("801", "621")
    stages = [("appointmentscheduled", iso(NOW_MS - 20 * DAY)), ("closedwon", iso(NOW_MS - 25 * MIN))]
    fake.set_history("deals", "801", "dealstage", stages)
    fake.set_history("deals", "801", "amount", [("5000", iso(NOW_MS - 20 * DAY))])

    assert run(server, conn, NOW_MS) == {"deals": 1}  # the stage change; the amount set 20 days ago is not news
    assert counters(conn, "621").deal_stage == "closedwon"
    assert (LeadStore(conn).state("hubspot", "621") or {}).get("state") == "WON"

    # The deal webhook for that change, delivered late, is the same event (the worker's deal op path).
    hook = {"subscriptionType": "deal.propertyChange", "objectId": 801, "occurredAt": NOW_MS - 25 * MIN,
            "eventId": 5, "propertyName": "dealstage", "propertyValue": "closedwon"}  # fmt: skip
    ops = parse_hubspot_batch([hook], NOW_MS, MAPPING).ops
    events = fetch_events(ops, client(server), MAPPING)
    assert [e.lead_id for e in events] == ["621"]
    assert LeadStore(conn).apply_batch(events, Decider(P, NOW_MS)).added == 0


def test_the_cursor_moves_and_a_second_run_adds_nothing(server: FakeHubSpotServer, conn: redis.Redis) -> None:
    fake = server.fake
    said_no(fake, "631", NOW_MS - 30 * MIN)
    assert run(server, conn, NOW_MS) == {"contacts": 1}
    assert int(conn.get(CURSOR_KEY) or 0) == NOW_MS - MIN
    later = NOW_MS + 15 * MIN
    assert sum(run(server, conn, later).values()) == 0  # the overlap reads the change again: a duplicate
    assert int(conn.get(CURSOR_KEY) or 0) == later - MIN
    assert counters(conn, "631").not_interested == 1


def test_a_change_inside_the_window_is_read_though_a_later_one_moved_the_record_past_it(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    fake = server.fake
    said_no(fake, "641", NOW_MS - 30 * MIN)
    # 30 s before the run (after the window closes, a minute of index slack): the industry is set.
    fake.set_history("contacts", "641", "industry", [("SOFTWARE", iso(NOW_MS - 30_000))])
    assert run(server, conn, NOW_MS) == {"contacts": 1}  # the "no"; the industry is the next window's
    assert counters(conn, "641").segment is None
    assert run(server, conn, NOW_MS + 15 * MIN) == {"contacts": 1}
    assert counters(conn, "641").segment == "SOFTWARE"


def test_more_changed_contacts_than_a_search_can_page_through_are_all_read(
    server: FakeHubSpotServer, conn: redis.Redis
) -> None:
    fake = server.fake
    fake.configure(search_cap=400)  # HubSpot's is 10,000: the same split, with fewer records
    for n in range(450):
        said_no(fake, str(70_000 + n), NOW_MS - 50 * MIN + n * 1000)
    assert run(server, conn, NOW_MS) == {"contacts": 450}
    # Each page is a new query from the last modification time seen: never near the cap.
    searches = fake.api_calls("POST", "/crm/v3/objects/contacts/search")
    assert [c["status"] for c in searches] == [200, 200, 200]
    assert all("after" not in c["body"] for c in searches)
    assert all(counters(conn, str(70_000 + n)).not_interested == 1 for n in range(450))


class BusyPortal(FakeHubSpot):
    """A rep edits a contact of the first page while reconciliation pages through the search."""

    def _search(self, otype: str) -> tuple[dict[str, object], int]:
        answer = super()._search(otype)
        if otype == "contacts" and len(self.api_calls("POST", "/contacts/search")) == 0:
            self.set_history("contacts", "70010", "industry", [("RETAIL", iso(NOW_MS - 2 * MIN))])
        return answer


def test_a_record_changed_while_the_search_pages_pushes_none_of_the_others_out_of_sight(conn: redis.Redis) -> None:
    # 70010 moves to the end of the order after the first page: by offsets, 70200 would slide
    # back across the page boundary and never be read.
    with FakeHubSpotServer(BusyPortal()) as server:
        for n in range(450):
            said_no(server.fake, str(70_000 + n), NOW_MS - 50 * MIN + n * 1000)
        run(server, conn, NOW_MS)
    assert [n for n in range(450) if counters(conn, str(70_000 + n)).not_interested != 1] == []
    assert counters(conn, "70010").segment == "RETAIL"  # read again, with its new change


class DeletingPortal(FakeHubSpot):
    """A contact is deleted between the search that found it and the read of its history."""

    def _search(self, otype: str) -> tuple[dict[str, object], int]:
        answer = super()._search(otype)
        if otype == "contacts":
            self.delete("contacts", "661")
        return answer


def test_a_contact_deleted_before_its_history_is_read_leaves_the_others_read(conn: redis.Redis) -> None:
    with FakeHubSpotServer(DeletingPortal()) as server:
        said_no(server.fake, "661", NOW_MS - 30 * MIN)
        said_no(server.fake, "662", NOW_MS - 29 * MIN)
        assert run(server, conn, NOW_MS) == {"contacts": 1}
        [read] = server.fake.api_calls("POST", "/contacts/batch/read")
    assert read["status"] == 207  # HubSpot's answer naming the id it no longer has
    assert counters(conn, "662").not_interested == 1
