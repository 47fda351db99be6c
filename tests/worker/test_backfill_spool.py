"""A live backfill's spool: everything read first, then queued lead by lead (worker/backfill_spool.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import redis

from rules.events import Event
from tests.fakes.hubspot import FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import seed_portal
from tests.worker.test_backfill import NOW_MS, backfill, history
from worker.backfill_spool import SpoolSink, spool_path
from worker.queues import make_queue


def queued_jobs(conn: redis.Redis) -> list[list[Event]]:
    queue = make_queue(conn, "pruner")
    jobs = [queue.fetch_job(i) for i in queue.job_ids]
    assert all(job is not None and job.kwargs == {"source": "backfill"} for job in jobs)
    return [[Event.from_wire(w) for w in job.args[0]] for job in jobs if job is not None]


@pytest.mark.parametrize("shard_bytes", [32 * 1024 * 1024, 20_000])  # one shard, or many
@pytest.mark.parametrize("job_events", [120, 15])  # leads of ~20 events: many to a job, or one job each
def test_each_leads_events_are_queued_together_oldest_first_once_everything_is_read(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path, shard_bytes: int, job_events: int
) -> None:
    seed_portal(fake, NOW_MS, contacts=40)
    path = str(tmp_path / "spool.jsonl")
    queue = make_queue(conn, "pruner")
    sink = SpoolSink(path, False, queue, job_events=job_events, max_queued=100, shard_bytes=shard_bytes)
    tally = backfill(history(server, conn), sink, conn).run()
    assert queued_jobs(conn) == []  # read, spooled, nothing queued yet
    sink.finish()
    jobs = queued_jobs(conn)
    # At most `job_events` a job, but for a lead with more, alone in its job.
    assert len(jobs) == sink.jobs >= 2
    assert all(len(job) <= job_events or len({e.lead_id for e in job}) == 1 for job in jobs)
    assert (job_events == 15) == any(len(job) > job_events for job in jobs)
    where: dict[str, set[int]] = defaultdict(set)
    for n, job in enumerate(jobs):
        for event in job:
            where[event.lead_id].add(n)
    # A lead's events are never split over jobs (applied in the wrong order, the later part
    # would fold the earlier one away: test_a_history_split_over_two_jobs_...).
    assert all(len(jobs_of) == 1 for jobs_of in where.values())
    for lead in where:
        history_of = [e for job in jobs for e in job if e.lead_id == lead]
        assert [e.occurred_ms for e in history_of] == sorted(e.occurred_ms for e in history_of)
    assert sum(len(job) for job in jobs) == sum(tally.events.values())
    assert not Path(path).exists()  # personal data: gone once queued


def test_a_page_spooled_twice_is_queued_once(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path
) -> None:
    seed_portal(fake, NOW_MS, contacts=5)
    path = str(tmp_path / "spool.jsonl")
    first = SpoolSink(path, False, make_queue(conn, "pruner"))
    backfill(history(server, conn), first).run(["contacts", "calls"])
    once = Path(path).read_text()
    again = SpoolSink(path, True, make_queue(conn, "pruner"))  # a resumed run reads its last page again
    backfill(history(server, conn), again).run(["calls"])
    assert len(Path(path).read_text()) > len(once)
    again.finish()
    queued = [e.id for job in queued_jobs(conn) for e in job]
    assert sorted(queued) == sorted(set(queued)) and len(queued) == len(once.splitlines())


def test_a_runs_spool_is_named_after_its_cursors() -> None:
    path = spool_path("pruner:backfill:hubspot:0123456789abcdef", "/spool")
    assert path == "/spool/pruner-backfill-hubspot-0123456789abcdef.jsonl"


def test_a_history_split_over_two_jobs_loses_its_older_part_when_they_are_applied_newest_first() -> None:
    """Why the spool never splits a lead: its later part applied first folds what is past the
    retention horizon, and the earlier part is then ignored as past the horizon."""
    import fakeredis

    from rules.events import Crm, EventType
    from worker.decide import Decider
    from worker.policyfile import default_policy
    from worker.store import LeadStore

    day = 86_400_000
    events = [
        Event(f"e{n}", EventType.CALL_ATTEMPTED, Crm.HUBSPOT, "L", NOW_MS - (400 - n) * day, {}) for n in range(400)
    ]
    older, newer = events[:200], events[200:]
    kept = {}
    for name, order in (("in order", (older, newer)), ("newest first", (newer, older)), ("one job", (events,))):
        store = LeadStore(fakeredis.FakeRedis())
        for part in order:
            store.apply_batch(part, Decider(default_policy(), NOW_MS, dry_run=True))
        log = store.log("hubspot", "L")
        assert log is not None and log.fold is not None
        kept[name] = log.fold.events + len(log.events)
    assert kept["in order"] == kept["one job"] == 400
    assert kept["newest first"] < 400


def test_a_history_too_large_for_one_job_is_queued_in_parts_each_once_the_one_before_is_applied(
    conn: redis.Redis, tmp_path: Path
) -> None:
    from rules.events import Crm, EventType
    from rules.hubspot_map import Versioned

    queue = make_queue(conn, "pruner")
    applied: list[list[list[Event]]] = []  # what the "worker" found queued, each time it ran

    def worker_applies_everything(seconds: float) -> None:
        jobs = [queue.fetch_job(i) for i in queue.job_ids]
        applied.append([[Event.from_wire(w) for w in job.args[0]] for job in jobs if job is not None])
        queue.empty()

    def calls(lead: str, n: int) -> list[Versioned]:
        return [
            Versioned(Event(f"{lead}{i}", EventType.CALL_ATTEMPTED, Crm.HUBSPOT, lead, NOW_MS - i * 60_000, {}), None)
            for i in range(n)
        ]

    sink = SpoolSink(
        str(tmp_path / "spool.jsonl"), False, queue, job_events=15, max_queued=100, lead_job_max=10,
        sleep=worker_applies_everything,
    )  # fmt: skip
    sink.write(calls("A", 3) + calls("BIG", 25) + calls("C", 3))
    sink.commit()
    sink.finish()
    worker_applies_everything(0)  # the last part
    big = [[e for e in job if e.lead_id == "BIG"] for run in applied for job in run]
    parts = [part for part in big if part]
    assert [len(part) for part in parts] == [10, 10, 5]
    times = [e.occurred_ms for part in parts for e in part]
    assert times == sorted(times)  # oldest first
    # Each part ran alone: never two parts of the lead where a worker could take them at once.
    assert all(sum(any(e.lead_id == "BIG" for e in job) for job in run) <= 1 for run in applied)
    everything = [e.id for run in applied for job in run for e in job]
    assert sorted(everything) == sorted({*everything}) and len(everything) == 31
