"""Where a backfill's events go: the live queue, a JSONL file, or nowhere (worker/backfill.py `Run`).

Each sink takes the events of a page (`write`), makes them durable before the run's cursors
move past them (`commit`), and ends (`close`). `JsonlSink` is also a live run's spool
(worker/backfill_spool.py), which `QueueSink` then queues lead by lead.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from rq import Queue
from rq.job import Job, JobStatus

from rules.events import MAX_EVENTS_PER_BATCH, to_canonical
from rules.hubspot_map import Versioned
from worker.queues import enqueue_events

SOURCE = "backfill"  # the `source` of queued batches: metrics count backfilled events apart from webhooks


class Sink(Protocol):
    def write(self, events: Sequence[Versioned]) -> None: ...

    def commit(self) -> None:
        """Make what was written durable: the cursors move past it next."""

    def close(self) -> None: ...


class NullSink:
    """The dry run's sink: keeps nothing."""

    def write(self, events: Sequence[Versioned]) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """Canonical events, one JSON object a line, as `pruner simulate` reads them.

    The file holds personal data (email addresses in `lead_profile`), so it is created readable
    by its owner alone, and never through a symbolic link. `exclusive`: the file must not exist
    yet (a live run's spool, in a shared temporary directory where another user could have
    planted one); when resuming, it must be a regular file of ours.
    """

    def __init__(self, path: str, append: bool, exclusive: bool = False) -> None:
        self.path = path
        if append:
            check_own(path)
            drop_torn_line(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
        if exclusive and not append:
            flags |= os.O_EXCL
        fd = os.open(path, flags, 0o600)
        self.stream: IO[str] = os.fdopen(fd, "a" if append else "w", encoding="utf-8")

    def write(self, events: Sequence[Versioned]) -> None:
        for item in events:
            self.stream.write(json.dumps(to_canonical(item.event, item.record), separators=(",", ":")) + "\n")

    def commit(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def close(self) -> None:
        self.stream.close()


def check_own(path: str) -> None:
    """Refuse to continue a file that is a link, or someone else's: it may not be what we wrote."""
    found = os.lstat(path)
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.getuid():
        raise OSError(errno.EPERM, "not a regular file of this user", path)


def drop_torn_line(path: str, block: int = 65_536) -> None:
    """Cut the file back to its last complete line.

    A run killed outright (no handler runs: SIGKILL, a lost machine) can leave the page it was
    writing half on disk, its last line cut short; appended to, that line would run into the
    next and `simulate` would refuse the file. Whole lines after the last commit may stay: the
    resumed run reads their page again, and the same ids count once.
    """
    with open(path, "rb+") as stream:
        end = stream.seek(0, os.SEEK_END)
        cut = end
        while cut > 0:
            start = max(0, cut - block)
            stream.seek(start)
            newline = stream.read(cut - start).rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            cut = start
        if cut < end:
            stream.truncate(cut)


class QueueSink:
    """The live pipeline: RQ jobs of at most 1,000 events, as the webhook routes queue them.

    It waits while `max_queued` jobs or more are queued: a backfill filling the queue would
    delay live webhooks, and past the web's backpressure threshold get them refused.
    """

    def __init__(
        self,
        queue: Queue,
        job_events: int = MAX_EVENTS_PER_BATCH,
        max_queued: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue = queue
        self.job_events = job_events
        self.max_queued = max_queued
        self.sleep = sleep
        self.pending: list[list[Any]] = []
        self.jobs = 0
        self.job_ids: list[str] = []
        self.waited_s = 0.0

    def write(self, events: Sequence[Versioned]) -> None:
        self.pending.extend(item.event.to_wire() for item in events)

    def commit(self) -> None:
        for start in range(0, len(self.pending), self.job_events):
            self.enqueue(self.pending[start : start + self.job_events])
        self.pending = []

    def enqueue(self, wires: list[list[Any]]) -> None:
        """Queue one job of events (wire form), once fewer than `max_queued` jobs wait."""
        while self.queue.count >= self.max_queued:
            self.sleep(0.5)  # the workers are busy: let them (and the webhooks) catch up
            self.waited_s += 0.5
        self.job_ids.append(enqueue_events(self.queue, wires, SOURCE))
        self.jobs += 1

    def close(self) -> None:
        self.commit()

    def wait_applied(self, tell: Callable[[int], None] = lambda left: None) -> int:
        """Wait until the workers have run every job this sink queued; return how many failed.

        A job is deleted once it succeeds (result_ttl=0); a failed one stays, in the failed
        registry, for `pruner replay --failed`.
        """
        left = list(self.job_ids)
        failed = JobStatus.FAILED.value.encode()
        while True:
            # The status field alone: a job can be deleted between two reads of a whole job.
            with self.queue.connection.pipeline(transaction=False) as pipe:
                for job_id in left:
                    pipe.hget(Job.key_for(job_id), "status")
                statuses: list[bytes | None] = pipe.execute()
            refused = sum(1 for status in statuses if status == failed)
            left = [job_id for job_id, status in zip(left, statuses, strict=True) if status not in (None, failed)]
            if not left:
                return refused
            tell(len(left))
            self.sleep(0.5)
