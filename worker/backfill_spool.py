"""A live backfill's events, held in a local file until every object type is read, then queued lead by lead.

Queued as they were read, object type after object type, the events reached the workers a
part of each lead's history at a time, and the workers decided on each part at once: a lead
whose reply is an email was seen first with its calls alone, long silent, and marked lost in
the CRM (or given a break-up task) before its reply arrived; the lost status stayed. So a
live backfill writes its events to a spool file (`JsonlSink`, under the same cursors as an
`--out` file: an interrupted run continues it), and only once everything is read queues
them, each lead's events together in one job, oldest first (a lead with more events than a
job holds has a job of its own, as large as its history). The workers then decide on whole
histories.

The spool is read in shards of leads (`read_events`' sharding), so that grouping holds about
`SHARD_BYTES` of events in memory at a time, whatever the portal's size. It holds what the
events hold (email addresses among them) and is deleted once queued.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from rq import Queue

from rules.events import MAX_EVENTS_PER_BATCH, Event
from rules.hubspot_map import Versioned
from worker.backfill_sinks import JsonlSink, QueueSink, check_own
from worker.simulate import read_events

SHARD_BYTES = 32 * 1024 * 1024  # of spool grouped in memory at a time: ~100,000 events of ~300 bytes a line
# The most events one lead's job holds (~15 MB of job, a few seconds of a worker's 120 s timeout).
LEAD_JOB_MAX = 50_000


def spool_path(cursors_key: str, directory: str | None = None) -> str:
    """Where a live run (identified by its cursors' key) keeps its spool."""
    run = cursors_key.rsplit(":", 2)
    return os.path.join(directory or tempfile.gettempdir(), f"pruner-backfill-{run[-2]}-{run[-1]}.jsonl")


class SpoolSink:
    """Writes events to the spool as they are read; `finish` queues them, lead by lead, once all are read."""

    def __init__(
        self,
        path: str,
        append: bool,
        queue: Queue,
        job_events: int = MAX_EVENTS_PER_BATCH,
        max_queued: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        shard_bytes: int = SHARD_BYTES,
        lead_job_max: int = LEAD_JOB_MAX,
    ) -> None:
        self.path = path
        if not append and os.path.lexists(path):
            check_own(path)  # refused if it is not ours: someone else planted it
            os.remove(path)  # an earlier run's, left by a kill: it holds personal data
        self.spool = JsonlSink(path, append, exclusive=True)
        self.queued = QueueSink(queue, job_events, max_queued, sleep)
        self.job_events = job_events
        self.shard_bytes = shard_bytes
        self.lead_job_max = lead_job_max

    @property
    def jobs(self) -> int:
        return self.queued.jobs

    def write(self, events: Sequence[Versioned]) -> None:
        self.spool.write(events)

    def commit(self) -> None:
        self.spool.commit()

    def close(self) -> None:
        self.spool.close()

    def _in_order(self, job: list[list[Any]], history: list[Event]) -> None:
        """Queue `job`, then `history` in parts of `lead_job_max`, each once the workers applied all before it."""
        if job:
            self.queued.enqueue(job)
        for start in range(0, len(history), self.lead_job_max):
            self.queued.wait_applied()
            self.queued.enqueue([e.to_wire() for e in history[start : start + self.lead_job_max]])

    def finish(self) -> int:
        """Queue every spooled event, each lead's together and oldest first; delete the spool; return jobs queued.

        Interrupted here, the run is read again from the start (its cursors are gone): the events
        queued already are duplicates to the workers.
        """
        self.spool.close()
        shards = os.path.getsize(self.path) // self.shard_bytes + 1
        for shard in range(shards):
            leads: dict[tuple[str, str], dict[str, Event]] = defaultdict(dict)
            with open(self.path, "rb") as stream:
                for event in read_events(stream, shard, shards):
                    leads[(event.crm.value, event.lead_id)][event.id] = event  # a page read twice: once
            job: list[list[Any]] = []
            for key in sorted(leads):
                history = sorted(leads[key].values(), key=lambda e: (e.occurred_ms, e.id))
                if job and len(job) + len(history) > self.job_events:
                    self.queued.enqueue(job)
                    job = []
                # Not split, even past `job_events`: two parts go to two jobs, which two workers
                # may apply in either order, and the later part applied first folds the lead's
                # events past the retention horizon; the earlier part, all dated before that
                # fold, would then be past the horizon, and ignored.
                if len(history) > self.lead_job_max:
                    # (a history too large for one job: its parts in order, each once the one
                    # before it, and everything queued before them, is applied)
                    self._in_order(job, history)
                    job = []
                    continue
                job += [e.to_wire() for e in history]
                if len(job) >= self.job_events:
                    self.queued.enqueue(job)
                    job = []
            if job:
                self.queued.enqueue(job)
        os.remove(self.path)
        return self.queued.jobs
