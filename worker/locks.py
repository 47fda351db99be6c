"""Releasing a Redis lock only while it is still ours.

A lock is `SET key token NX PX ttl`. A holder that outlived the TTL must not delete the
lock the next holder took meanwhile, and a GET then DEL leaves a gap for exactly that:
compare and delete run in one script.
"""

from __future__ import annotations

import redis

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def release(connection: redis.Redis, key: str, token: str) -> bool:
    """Delete `key` if it still holds `token`; say whether it did."""
    return bool(connection.eval(_RELEASE, 1, key, token))
