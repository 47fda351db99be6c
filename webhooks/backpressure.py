"""Refuse webhooks, for now, that Pruner could not keep or reach soon: the CRMs will retry.

HubSpot and Salesforce retry a refused delivery for about a day, so answering 503 with
`Retry-After` when Redis is nearly out of memory (the next writes would fail, or, with a
wrong eviction policy, evict) or when the queue is so far behind that the workers are not
keeping up, loses nothing; accepting would. The reading costs two Redis round trips and is
cached per process for a second, so the request path does not pay for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from rq import Queue

from worker.queuehealth import oldest_wait_s

RETRY_AFTER_S = 120


class Backpressure:
    """Say, at most once a second per process, whether the webhooks should refuse work."""

    def __init__(
        self,
        connection: redis.Redis,
        queue: Queue,
        max_lag_s: int,
        max_memory_percent: int,
        clock: Callable[[], float] = time.time,
        every_s: float = 1.0,
    ) -> None:
        self.connection, self.queue, self.clock, self.every_s = connection, queue, clock, every_s
        self.max_lag_s, self.max_memory_percent = max_lag_s, max_memory_percent
        self._checked_at = float("-inf")
        self._reason: str | None = None

    def reason(self) -> str | None:
        """A sentence saying why to refuse, or None to accept."""
        now = self.clock()
        if now - self._checked_at >= self.every_s:
            self._checked_at = now
            try:
                self._reason = self._read(now)
            except redis.ResponseError:  # no INFO here (a proxy, an emulator): nothing to judge
                self._reason = None
        return self._reason

    def _read(self, now: float) -> str | None:
        if self.max_memory_percent < 100:
            memory = self.connection.info("memory")
            used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
            if limit and used * 100 >= limit * self.max_memory_percent:
                return (
                    f"Redis is {used * 100 // limit}% full (the limit for accepting work is "
                    f"{self.max_memory_percent}%); nothing was accepted, retry later"
                )
        if self.max_lag_s:
            lag = oldest_wait_s(self.queue, now)
            if lag > self.max_lag_s:
                return (
                    f"the queue is {int(lag)} s behind (the limit is {self.max_lag_s} s): the workers "
                    "are not keeping up; nothing was accepted, retry later"
                )
        return None
