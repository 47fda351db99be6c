"""`pruner backfill hubspot` against the fake HubSpot server (real HTTP) and the real Redis (DB 12)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from rules.events import Crm, Event, EventType, parse_event
from rules.events import format_ms as iso
from rules.hubspot_map import HubSpotMapping
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import CONNECTED, DAY_MS, NO_ANSWER, seed_portal
from worker import hubspot_ops
from worker.backfill import Backfill, Cursors, Window
from worker.backfill_sinks import JsonlSink, NullSink, QueueSink, drop_torn_line
from worker.crm.hubspot_backfill import HubSpotHistory, SearchCapError, SearchPage, search_limiter
from worker.crm.hubspot_client import HubSpotClient
from worker.crm.hubspot_responses import HubSpotApiError
from worker.crm.ratelimit import RateLimiter
from worker.queues import make_queue
from worker.simulate import read_events

NOW_MS = 1_790_000_000_000  # the backfill's clock: histories are dated from it, never from today
WINDOW = Window(NOW_MS - 200 * DAY_MS, NOW_MS)
MAPPING = HubSpotMapping()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(server: FakeHubSpotServer, conn: redis.Redis, sleep: Sleeps | None = None) -> HubSpotClient:
    # With a recorded sleep, no shared limiter: its hold after a 429 would be waited out for real.
    limiter = None if sleep is not None else RateLimiter(conn, 1000, 1.0, key="pruner:ratelimit:unit", margin_s=0)
    sleep = sleep if sleep is not None else Sleeps()
    return HubSpotClient(server.url, TOKEN, limiter, backoff_base_s=0.01, backoff_cap_s=0.05, sleep=sleep)


def history(server: FakeHubSpotServer, conn: redis.Redis, **options: Any) -> HubSpotHistory:
    return HubSpotHistory(client(server, conn, options.pop("sleep", None)), **options)


def backfill(hs: HubSpotHistory, sink: Any, conn: redis.Redis | None = None, **options: Any) -> Backfill:
    cursors = Cursors(conn, WINDOW, "test") if conn is not None else None
    return Backfill(hs, sink, WINDOW, MAPPING, cursors, clock=lambda: NOW_MS / 1000, **options)


def read_jsonl(path: Path) -> list[Event]:
    with open(path, "rb") as stream:
        return list(read_events(stream))


def test_engagements_get_the_webhook_paths_event_ids_and_versions(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    portal = seed_portal(fake, NOW_MS, contacts=20)
    out = tmp_path / "history.jsonl"
    tally = backfill(history(server, conn), JsonlSink(str(out), append=False)).run()
    assert tally.records["calls"] == len(portal.engagements["calls"]) and tally.records["contacts"] == 20
    written = {e.id: e for e in read_jsonl(out)}  # read back through simulate's reader: canonical JSON
    # What the worker makes of the `object.creation` webhook of each engagement (fetch, then map).
    ops: list[Any] = [
        {"op": "engagement", "crm": "hubspot", "object_type": kind, "object_id": eid, "at": NOW_MS}
        for kind, ids in portal.engagements.items()
        for eid in ids
    ]
    webhook = hubspot_ops.fetch_events(ops, client(server, conn), MAPPING)
    assert webhook and all(written.get(e.id) == e for e in webhook)  # same id, same data, same version


def test_contact_history_maps_like_webhooks_state_at_since_and_changes_in_the_window(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    fake.add_contact("7")
    before, inside, after = WINDOW.since_ms - 5 * DAY_MS, WINDOW.since_ms + DAY_MS, WINDOW.until_ms + DAY_MS
    fake.set_history("contacts", "7", "industry", [("RETAIL", iso(before - DAY_MS)), ("SOFTWARE", iso(before))])
    fake.set_history("contacts", "7", "hs_email_optout", [("true", iso(inside))])
    fake.set_history("contacts", "7", "hs_lead_status", [("UNQUALIFIED", iso(inside)), ("OPEN", iso(after))])
    fake.set_history("contacts", "7", "hs_sales_email_last_replied", [(iso(inside + 5), iso(inside + 9))])
    out = tmp_path / "c.jsonl"
    backfill(history(server, conn), JsonlSink(str(out), append=False)).run(["contacts"])
    events = sorted(read_jsonl(out), key=lambda e: e.occurred_ms)
    assert [(e.type.value, dict(e.data), e.occurred_ms) for e in events] == [
        ("lead_profile", {"segment": "SOFTWARE"}, before),  # the value in force at --since, not the older one
        ("do_not_contact", {"channels": ["email"]}, inside),
        ("email_replied", {}, inside + 5),  # keyed and dated like the webhook's reply
    ]  # UNQUALIFIED is not a reopen; OPEN came after --until
    assert events[2].id == f"hs:reply:7:{inside + 5}"


def test_deal_history_gives_one_event_per_version_and_contact(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    fake.add_contact("1")
    fake.add_contact("2")
    fake.add_deal("55", "1")
    fake.add_deal("56")  # no contact: nothing to say
    with fake.lock:
        fake._associate("deals", "55", "contacts", "2")
    t = WINDOW.since_ms + DAY_MS
    fake.set_history("deals", "55", "dealstage", [("appointmentscheduled", iso(t)), ("closedwon", iso(t + DAY_MS))])
    fake.set_history("deals", "55", "amount", [("60000", iso(t))])
    out = tmp_path / "d.jsonl"
    backfill(history(server, conn), JsonlSink(str(out), append=False)).run(["deals"])
    events = read_jsonl(out)
    assert {(e.lead_id, e.data.get("stage"), e.data.get("amount")) for e in events} == {
        (c, s, a) for c in "12" for s, a in (("appointmentscheduled", None), ("closedwon", None), (None, 60000.0))
    }
    assert all(e.type.value == "deal_updated" and e.data["deal_id"] == "55" for e in events)


def test_search_splits_its_window_before_the_cap_and_loses_nothing(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    fake.add_contact("1")
    t0 = WINDOW.since_ms + DAY_MS
    for n in range(1_100):  # groups of 7 calls share a millisecond, across the page and query boundaries
        fake.add_engagement("calls", str(n + 1), ["1"], hs_timestamp=iso(t0 + (n // 7) * 1000))
    fake.configure(search_cap=500)
    hs = history(server, conn, search_cap=500)
    seen = [r["id"] for page in hs.search_window("calls", ["hs_timestamp"], WINDOW.since_ms, WINDOW.until_ms)
            for r in page.records]  # fmt: skip
    assert sorted(seen, key=int) == [str(n + 1) for n in range(1_100)]  # each once: a re-read is not reported
    assert not fake.api_calls(contains="/search") or all(c["status"] == 200 for c in fake.api_calls())


def test_a_400_past_the_cap_starts_a_new_query_where_the_last_one_got_to(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    fake.add_contact("1")
    for n in range(1_000):
        fake.add_engagement("calls", str(n + 1), ["1"], hs_timestamp=iso(WINDOW.since_ms + n * 1000))
    fake.configure(search_cap=500)  # HubSpot's cap is lower than the client believes: it answers 400
    hs = history(server, conn)  # search_cap 10,000
    seen = [r["id"] for page in hs.search_window("calls", [], WINDOW.since_ms, WINDOW.until_ms) for r in page.records]
    assert sorted(seen, key=int) == [str(n + 1) for n in range(1_000)]
    assert any(c["status"] == 400 for c in fake.api_calls(contains="/search"))


def test_more_records_at_one_millisecond_than_a_search_can_page_is_an_error_not_a_loss(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    for n in range(450):
        fake.add_engagement("calls", str(n + 1), hs_timestamp=iso(WINDOW.since_ms))
    fake.configure(search_cap=400)
    with pytest.raises(SearchCapError, match="more than 400"):
        list(history(server, conn, search_cap=400).search_window("calls", [], WINDOW.since_ms, WINDOW.until_ms))


def test_the_real_cap_of_10000(server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis) -> None:
    for n in range(10_150):
        fake.add_engagement("calls", str(n + 1), hs_timestamp=iso(WINDOW.since_ms + n * 10))
    pages = list(history(server, conn).search_window("calls", [], WINDOW.since_ms, WINDOW.until_ms))
    assert len({r["id"] for p in pages for r in p.records}) == 10_150
    assert all(c["status"] == 200 for c in fake.api_calls(contains="/search"))


def test_429_with_retry_after_is_waited_out_through_the_shared_client(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    seed_portal(fake, NOW_MS, contacts=5)
    fake.configure(script=[{"status": 429, "path": "/crm/v3/objects/calls/search", "retry_after": "2"},
                           {"status": 429, "path": "/crm/v3/objects/contacts", "retry_after": "3"}])  # fmt: skip
    sleeps = Sleeps()
    tally = backfill(history(server, conn, sleep=sleeps), NullSink()).run()
    assert tally.records["contacts"] == 5 and tally.records["calls"] > 0
    waits = sorted(s for s in sleeps if s >= 2)
    assert len(waits) == 2 and 2 <= waits[0] < 2.5 and 3 <= waits[1] < 3.5  # Retry-After, plus a little jitter


def test_interrupted_run_continues_from_its_cursors_and_a_second_run_adds_nothing(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    seed_portal(fake, NOW_MS, contacts=120)
    whole = tmp_path / "whole.jsonl"
    backfill(history(server, conn), JsonlSink(str(whole), append=False)).run()
    expected = {e.id: e for e in read_jsonl(whole)}

    pages = []

    def stop_midway(kind: str, records: int, events: int, left: int | None) -> None:
        pages.append(kind)
        if kind == "calls" and pages.count("calls") == 2:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        backfill(history(server, conn), JsonlSink(str(resumed), append=False), conn, progress=stop_midway).run()
    cursors = Cursors(conn, WINDOW, "test").load()
    assert cursors["contacts"] == {"after": None, "done": True} and "from_ms" in cursors["calls"]
    fake.calls.clear()
    tally = backfill(history(server, conn), JsonlSink(str(resumed), append=True), conn).run()
    assert tally.resumed == ["contacts", "deals", "calls"]
    assert not fake.api_calls(contains="/crm/v3/objects/contacts")  # contacts were not read again
    first_search = fake.api_calls(contains="/calls/search")[0]["body"]["filterGroups"][0]["filters"][0]
    assert int(first_search["value"]) == cursors["calls"]["from_ms"]
    again = read_jsonl(resumed)
    assert {e.id: e for e in again} == expected  # nothing lost; a page read twice repeats ids only
    assert not conn.exists(Cursors(conn, WINDOW, "test").key)  # finished: the cursors are gone


def test_live_backfill_queues_webhook_like_jobs_of_at_most_1000_events(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    seed_portal(fake, NOW_MS, contacts=60)
    queue = make_queue(conn, "pruner")
    sink = QueueSink(queue, job_events=300)
    tally = backfill(history(server, conn), sink, conn).run()
    jobs = [queue.fetch_job(i) for i in queue.job_ids]
    assert len(jobs) == sink.jobs and sink.jobs >= 2
    queued = [Event.from_wire(w) for job in jobs if job is not None for w in job.args[0]]
    assert all(job is not None and job.func_name == "worker.jobs.process_events" for job in jobs)
    assert all(job is not None and len(job.args[0]) <= 300 and job.kwargs == {"source": "backfill"} for job in jobs)
    assert len(queued) == sum(tally.events.values())


def test_dry_run_counts_and_writes_nothing(server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis) -> None:
    portal = seed_portal(fake, NOW_MS, contacts=30)
    before = set(conn.keys("*"))
    tally = backfill(history(server, conn), NullSink()).run()
    assert tally.records["meetings"] == len(portal.engagements["meetings"]) and len(tally.leads) == 30
    assert sum(tally.owners.values()) == 30 and set(tally.owners) <= {"101", "102", "103"}
    assert set(conn.keys("*")) - before <= {b"pruner:ratelimit:unit"}  # only the shared rate limiter's own key


def test_search_budget_is_shared_through_redis(conn: redis.Redis) -> None:
    limiter = search_limiter(conn, (4, 1.0))
    assert limiter.key == "pruner:ratelimit:hubspot:search" and limiter.limit == 4


def test_call_classification_follows_the_disposition(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    fake.add_contact("1")
    t = WINDOW.since_ms + DAY_MS
    fake.add_engagement("calls", "1", ["1"], hs_timestamp=iso(t), hs_call_disposition=NO_ANSWER)
    fake.add_engagement("calls", "2", ["1"], hs_timestamp=iso(t + 1), hs_call_disposition=CONNECTED)
    out = tmp_path / "calls.jsonl"
    backfill(history(server, conn), JsonlSink(str(out), append=False)).run(["calls"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["id"], x["type"]) for x in lines] == [
        ("hs:calls:1:1", "call_attempted"),
        ("hs:calls:2:1:call_connected", "call_connected"),
    ]
    assert all(parse_event(x, "line", NOW_MS) for x in lines)


def test_a_dry_run_says_the_first_live_run_asks_for_break_ups_not_a_wall_of_losses(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    # Guardrail 7 on day one: leads silent for months get their break-up task first.
    from dataclasses import replace

    from rules.lifecycle import evaluate
    from worker.firstrun import PreviewSink, first_run
    from worker.policyfile import default_policy

    seed_portal(fake, NOW_MS, contacts=60)
    sink = PreviewSink()
    tally = backfill(history(server, conn), sink).run()
    policy = replace(default_policy(), max_tasks_per_owner_per_day=2)
    preview = first_run(sink.leads, policy, NOW_MS, tally.contact_owner, task_clock=True)
    assert sum(preview.states.values()) == len(sink.leads) == len(tally.leads)
    # Replayed as a simulation (grace from the decision), the stale leads are lost already.
    simulated = {lead: evaluate(list(h.values()), policy, NOW_MS) for lead, h in sink.leads.items()}
    lost_by_grace = [
        lead for lead, ev in simulated.items() if ev.decisions and ev.decisions[-1].rule == "breakup_grace"
    ]
    assert lost_by_grace, "the portal has leads silent for longer than the grace"
    assert preview.states["LOST"] == 0 and preview.actions["mark_lost"] == 0
    assert (
        preview.states["BREAKUP_DUE"] >= len(lost_by_grace)
        and preview.actions["breakup_task"] == preview.states["BREAKUP_DUE"]
    )
    # Every task has its contact's owner, spread by the roll-out guard at two a day.
    assert set(preview.tasks_per_owner) <= {"101", "102", "103"}
    assert sum(preview.tasks_per_owner.values()) == preview.actions["breakup_task"] + preview.actions["reengage_task"]
    busiest = preview.tasks_per_owner.most_common(1)[0]
    assert preview.to_json()["tasks_per_owner"][busiest[0]] == {"tasks": busiest[1], "days": -(-busiest[1] // 2)}


def test_a_backfill_leaves_the_callbacks_their_share_of_the_rate_limit(conn: redis.Redis) -> None:
    from worker.config import Config
    from worker.crm.hubspot_client import build_client

    config = Config(hubspot_access_token="t", hubspot_rate_limit=(10, 60.0))
    backfilling = build_client(config, conn, share_percent=80)
    callbacks = build_client(config, conn)
    assert backfilling.limiter is not None and callbacks.limiter is not None
    assert backfilling.limiter.key == callbacks.limiter.key  # one budget, shared
    for _ in range(8):
        backfilling.limiter.acquire(timeout_s=1)
    with pytest.raises(TimeoutError):
        backfilling.limiter.acquire(timeout_s=0.2)  # its 80 % of the window is spent...
    callbacks.limiter.acquire(timeout_s=0.2)  # ...and the callbacks still find their 20 %
    callbacks.limiter.acquire(timeout_s=0.2)
    with pytest.raises(TimeoutError):
        callbacks.limiter.acquire(timeout_s=0.2)  # the portal's own limit holds for everyone


def test_searches_stay_under_hubspots_search_limit_while_the_portal_budget_makes_them_wait(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    # A search slot taken before a wait for the portal's budget would be spent early: the next
    # search then reaches HubSpot within the same second and is refused (bench/backfill.py).
    seed_portal(fake, NOW_MS, contacts=60)
    fake.configure(rate_limit=8, window_s=3.0, search_rate_limit=1)
    portal = RateLimiter(conn, 6, 3.0, key="pruner:ratelimit:unit", margin_s=0.05)
    hs = HubSpotHistory(
        HubSpotClient(server.url, TOKEN, portal, backoff_base_s=0.01, backoff_cap_s=0.05),
        search_limiter(conn, (1, 1.0)),
    )
    tally = backfill(hs, NullSink()).run()
    assert tally.records["calls"] > 0
    searches = fake.api_calls(contains="/search")
    assert len(searches) >= 4 and [c for c in fake.api_calls() if c["status"] == 429] == []


def test_a_live_backfill_waits_while_the_queue_is_full(conn: redis.Redis) -> None:
    # Live webhooks share the queue: a backfill must not bury them (nor trip the web's backpressure).
    queue = make_queue(conn)
    naps: list[float] = []

    def worker_catches_up(seconds: float) -> None:
        naps.append(seconds)
        queue.empty()  # meanwhile a worker took every job

    sink = QueueSink(queue, job_events=2, max_queued=3, sleep=worker_catches_up)
    events = [Event(f"c{i}", EventType.CALL_ATTEMPTED, Crm.HUBSPOT, "L", NOW_MS - i * 60_000, {}) for i in range(10)]
    from rules.hubspot_map import Versioned

    sink.write([Versioned(e, None) for e in events])
    sink.commit()
    assert sink.jobs == 5 and len(naps) == 1  # three jobs queued, then one wait, then two more
    assert queue.count == 2


class Overlapping(HubSpotHistory):
    """Pages of one record each; an association read notes whether the next search was sent while it ran."""

    def __init__(self, pages: int, fail_at: int | None = None, wait_s: float = 2.0) -> None:
        self.pages, self.fail_at, self.wait_s = pages, fail_at, wait_s
        self.searched = [threading.Event() for _ in range(pages + 1)]
        self.overlapped: list[bool] = []

    def search_window(self, *args: Any, **kwargs: Any) -> Iterator[SearchPage]:
        for n in range(self.pages):
            self.searched[n].set()
            yield SearchPage([{"id": str(n)}], n, self.pages - n - 1)
        self.searched[self.pages].set()

    def contacts_of(self, object_type: str, ids: Sequence[str]) -> dict[str, list[str]]:
        n = int(ids[0])
        if n == self.fail_at:
            raise HubSpotApiError(500, "refused")
        self.overlapped.append(self.searched[n + 1].wait(timeout=self.wait_s))
        return {i: [f"c{i}"] for i in ids}


def test_a_pages_associations_are_read_while_the_next_search_is_sent_and_pages_come_out_in_order() -> None:
    hs = Overlapping(6)
    out = list(hs.search_with_contacts("calls", [], 0, 1, batch=1))  # one page a read
    assert [(p.records[0]["id"], c) for p, c in out] == [(str(n), {str(n): [f"c{n}"]}) for n in range(6)]
    assert [p.resume_ms for p, _ in out] == list(range(6))
    assert hs.overlapped == [True] * 6  # each association read saw the next search (or the end) begin


def test_without_reading_ahead_each_association_read_comes_before_the_next_search() -> None:
    hs = Overlapping(3, wait_s=0.2)
    assert len(list(hs.search_with_contacts("calls", [], 0, 1, ahead=0, batch=1))) == 3
    assert hs.overlapped == [False] * 3  # what the overlap test above tells apart


def test_an_association_read_that_fails_fails_the_search_at_its_page() -> None:
    hs = Overlapping(5, fail_at=2)
    pages = hs.search_with_contacts("calls", [], 0, 1, batch=1)
    assert [next(pages)[0].resume_ms, next(pages)[0].resume_ms] == [0, 1]
    with pytest.raises(HubSpotApiError, match="refused"):
        next(pages)


def test_five_search_pages_share_one_association_read_and_come_out_in_order(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    for n in range(2_300):  # 12 pages of 200 (the last of 100): reads of 1,000, 1,000 and 300 ids
        fake.add_engagement("calls", str(n + 1), [str(n % 7)], hs_timestamp=iso(WINDOW.since_ms + n * 1000))
    out = list(history(server, conn).search_with_contacts("calls", [], WINDOW.since_ms, WINDOW.until_ms))
    assert [r["id"] for page, _ in out for r in page.records] == [str(n + 1) for n in range(2_300)]
    assert all(contacts == {str(r["id"]): [str((int(r["id"]) - 1) % 7)] for r in page.records}
               for page, contacts in out)  # fmt: skip
    assert [len(c["body"]["inputs"]) for c in fake.api_calls("POST", "/batch/read")] == [1_000, 1_000, 300]


def test_association_reads_take_1000_ids_a_request(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis
) -> None:
    for n in range(1_500):
        fake.add_engagement("calls", str(n + 1), [str(n % 7)], hs_timestamp=iso(WINDOW.since_ms + n))
    found = history(server, conn).contacts_of("calls", [str(n + 1) for n in range(1_500)])
    assert all(found[str(n + 1)] == [str(n % 7)] for n in range(1_500))
    assert [len(c["body"]["inputs"]) for c in fake.api_calls("POST", "/batch/read")] == [1_000, 500]
    with client(server, conn) as c:
        refused = c.request("POST", "/crm/v4/associations/calls/contacts/batch/read",
                            json={"inputs": [{"id": str(n)} for n in range(1_001)]})  # fmt: skip
    assert refused.status_code == 400  # HubSpot's limit, which the fake keeps


@pytest.mark.parametrize("block", [4, 65_536])
def test_a_resumed_file_loses_the_line_a_killed_run_left_half_written(tmp_path: Path, block: int) -> None:
    whole, torn = '{"id": "a"}\n{"id": "b"}\n', '{"id": "c", "ty'
    path = tmp_path / "out.jsonl"
    path.write_text(whole + torn)
    drop_torn_line(str(path), block)
    assert path.read_text() == whole
    drop_torn_line(str(path), block)  # nothing torn: nothing cut
    assert path.read_text() == whole
    path.write_text(torn)
    drop_torn_line(str(path), block)
    assert path.read_text() == ""


def test_a_backfill_resumed_after_a_kill_mid_page_writes_a_file_simulate_reads(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    seed_portal(fake, NOW_MS, contacts=5)
    out = tmp_path / "h.jsonl"
    backfill(history(server, conn), JsonlSink(str(out), append=False)).run(["contacts"])
    whole = read_jsonl(out)
    with open(out, "a", encoding="utf-8") as stream:
        stream.write('{"id": "hs:calls:1:10001", "type": "call_atte')  # where the kill cut the next page short
    backfill(history(server, conn), JsonlSink(str(out), append=True)).run(["calls"])
    events = read_jsonl(out)
    assert events[: len(whole)] == whole and any(e.type.value.startswith("call") for e in events)
