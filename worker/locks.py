"""Releasing a Redis lock only while it is still ours.

A lock is `SET key token NX PX ttl`. A holder that outlived the TTL must not delete the
lock the next holder took meanwhile, and a GET then DEL leaves a gap for exactly that:
compare and delete run in one script.
"""

from __future__ import annotations

import threading
from types import TracebackType

import redis

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def release(connection: redis.Redis, key: str, token: str) -> bool:
    """Delete `key` if it still holds `token`; say whether it did."""
    return bool(connection.eval(_RELEASE, 1, key, token))


_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class Heartbeat:
    """Keep a lock of ours alive while its holder lives: renew its short TTL from a thread.

    A holder that dies (SIGKILL, OOM, a lost host) stops renewing, so the lock frees itself
    within one TTL instead of blocking the next holder for as long as the longest job could
    take. `lost` turns true when a renewal finds the lock gone or someone else's.
    """

    def __init__(self, connection: redis.Redis, key: str, token: str, ttl_ms: int) -> None:
        self.connection, self.key, self.token, self.ttl_ms = connection, key, token, ttl_ms
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {key}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.connection.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost = True
                    return
            except redis.RedisError:
                continue  # Redis away for a moment: the next beat tries again, the TTL decides

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
