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
def test_each_leads_events_are_queued_together_oldest_first_once_everything_is_read(
    server: FakeHubSpotServer, fake: FakeHubSpot, conn: redis.Redis, tmp_path: Path, shard_bytes: int
) -> None:
    seed_portal(fake, NOW_MS, contacts=40)
    path = str(tmp_path / "spool.jsonl")
    sink = SpoolSink(path, False, make_queue(conn, "pruner"), job_events=120, shard_bytes=shard_bytes)
    tally = backfill(history(server, conn), sink, conn).run()
    assert queued_jobs(conn) == []  # read, spooled, nothing queued yet
    sink.finish()
    jobs = queued_jobs(conn)
    assert len(jobs) == sink.jobs >= 2 and all(len(job) <= 120 for job in jobs)
    where: dict[str, set[int]] = defaultdict(set)
    for n, job in enumerate(jobs):
        for event in job:
            where[event.lead_id].add(n)
    # A lead's events fill one job, or consecutive ones when it has more than a job holds.
    assert all(max(jobs_of) - min(jobs_of) + 1 == len(jobs_of) for jobs_of in where.values())
    assert sum(len(jobs_of) == 1 for jobs_of in where.values()) >= 35
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
