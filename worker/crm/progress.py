"""Which steps of which CRM actions already happened (so a drain re-run after a crash skips them).

Only the HubSpot adapter records steps today: its actions are several calls each (a contact,
its deals; an unsubscribe, then the flag), and a task or an unsubscribe must not be repeated.
Its own module, below both the adapter and the GDPR purge that forgets an erased lead's steps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence

import redis

PROGRESS_KEY = "pruner:hubspot:progress"
PROGRESS_TTL_S = 14 * 86_400  # as long as the drain remembers done actions
# The steps of each action kind this adapter carries out; progress is recorded per step.
# "task_sent" and "unsub_sent" are not steps done but doubts: the request went out, HubSpot may
# have carried it out; the next run looks before sending again.
STEPS = {
    "mark_lost": ("contact", "deals"),
    "suppress": ("unsub_sent", "unsub", "contact"),
    "breakup_task": ("task_sent", "task"),
    "reengage_task": ("task_sent", "task"),
    "forward_erasure": ("gdpr",),
}
ALL_STEPS = sorted({step for steps in STEPS.values() for step in steps})


class StepProgress:
    """Which steps of which actions already happened in HubSpot (so a re-run drain skips them).

    Members are hashes of (action id, step), scored by time, so the key holds no lead ids
    and old entries are trimmed as new ones arrive. An erasure removes its lead's entries
    (`forget`): a hash of guessable ids is still personal data.
    """

    def __init__(self, connection: redis.Redis, key: str = PROGRESS_KEY, ttl_s: int = PROGRESS_TTL_S) -> None:
        self.redis, self.key, self.ttl_s = connection, key, ttl_s

    @staticmethod
    def _member(action_id: str, step: str) -> str:
        return hashlib.sha256(f"{action_id}\0{step}".encode()).hexdigest()[:32]

    def done(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not pairs:
            return set()
        scores = self.redis.zmscore(self.key, [self._member(a, s) for a, s in pairs])
        return {pair for pair, score in zip(pairs, scores, strict=True) if score is not None}

    def forget(self, action_ids: Iterable[str]) -> int:
        """Remove every step recorded for `action_ids`; return how many entries went."""
        members = [self._member(a, step) for a in action_ids for step in ALL_STEPS]
        return int(self.redis.zrem(self.key, *members)) if members else 0

    def mark(self, pairs: Iterable[tuple[str, str]]) -> None:
        members = {self._member(a, s): time.time() for a, s in pairs}
        if not members:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key, members)
            pipe.zremrangebyscore(self.key, "-inf", time.time() - self.ttl_s)
            pipe.expire(self.key, self.ttl_s)
            pipe.execute()


def forget_progress(connection: redis.Redis, crm: str, action_ids: Iterable[str]) -> int:
    """Remove what the CRM adapter recorded about these actions' steps (HubSpot's progress)."""
    ids = sorted(action_ids)
    return StepProgress(connection).forget(ids) if crm == "hubspot" and ids else 0
