"""One request budget per CRM, shared by every worker process, kept in Redis.

HubSpot limits a private app to N requests per rolling 10 s window for the whole
portal (docs/crm.md: 100 / 10 s on Free and Starter), however many worker
processes send them. So the budget cannot live in a process: it is a sliding log
in one Redis sorted set (`pruner:ratelimit:hubspot`), updated by a Lua script that
reads Redis's own clock, which makes admission atomic across processes and
immune to their clocks disagreeing.

A 429 that gets through anyway (another integration spending the same portal
budget) sets a shared "blocked until" mark, so every process pauses, not just the
one that was told.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

import redis

from worker.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_KEY = "pruner:ratelimit:hubspot"
DEFAULT_LIMIT = 100
DEFAULT_WINDOW_S = 10.0
# A request admitted here reaches HubSpot a little later, and requests do not all take
# the same time to get there: holding each slot slightly longer than the window keeps
# the CRM's own count (by arrival) under its limit too.
DEFAULT_MARGIN_S = 0.5

# Returns 0 and records the request when a slot is free, else the microseconds to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local until_us = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_us > now then
  return {until_us - now, now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return {0, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {math.max(1, tonumber(oldest[2]) + window - now), now}
"""

# Pushes the shared "blocked until" mark forward (never back).
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us > current then
  redis.call('SET', KEYS[1], until_us, 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return until_us
"""


def parse_rate(raw: str, name: str = "HUBSPOT_RATE_LIMIT") -> tuple[int, float]:
    """Parse "100/10" (requests / seconds); raise ConfigError naming the bad value."""
    count, sep, seconds = raw.strip().partition("/")
    try:
        limit, window = int(count), float(seconds.strip().removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{name} must look like 100/10 (requests per seconds), got {raw!r}") from None
    if not sep or limit < 1 or not 0 < window <= 86_400:
        raise ConfigError(f"{name} must be at least 1 request per a positive number of seconds, got {raw!r}")
    return limit, window


MAX_BLOCK_S = 600.0  # a drain job's timeout: longer holds are left to RQ's retries


class RateLimiter:
    """A sliding-window request budget shared through Redis by every process using `key`."""

    def __init__(
        self,
        connection: redis.Redis,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        key: str = DEFAULT_KEY,
        margin_s: float = DEFAULT_MARGIN_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1:
            raise ConfigError(f"rate limit must allow at least 1 request, got {limit}")
        if window_s <= 0 or margin_s < 0:
            raise ConfigError(f"rate window must be positive and margin not negative, got {window_s}, {margin_s}")
        self.redis = connection
        self.limit = limit
        self.window_s = window_s
        self.key = key
        self.margin_s = margin_s
        self._sleep = sleep
        self._acquire = connection.register_script(_ACQUIRE)
        self._block = connection.register_script(_BLOCK)

    @property
    def _block_key(self) -> str:
        return f"{self.key}:until"

    def acquire(self, timeout_s: float | None = None) -> float:
        """Block until a request may be sent; return the admission time (Redis clock, epoch seconds).

        Raises TimeoutError when `timeout_s` passes first.
        """
        window_us = int((self.window_s + self.margin_s) * 1_000_000)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            member = uuid.uuid4().hex
            wait_us, now_us = self._acquire(keys=[self.key, self._block_key], args=[self.limit, window_us, member])
            if int(wait_us) == 0:
                return int(now_us) / 1_000_000
            # A little jitter: processes woken by the same expiring slot should not all race for it.
            wait = min(int(wait_us) / 1_000_000, self.window_s) + random.uniform(0, 0.02)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no request slot under {self.key} within {timeout_s} s")
                wait = min(wait, left)
            self._sleep(wait)

    def block(self, seconds: float) -> None:
        """Hold back every process sharing this budget for `seconds` (the CRM said 429), at most MAX_BLOCK_S.

        Capped: the wait comes from a response header, and one absurd `Retry-After` (a date in
        2049) must not stall every drain and every engagement fetch for years. Past the cap,
        the RQ retries of the jobs that keep meeting 429s carry on the waiting.
        """
        seconds = min(seconds, MAX_BLOCK_S)
        if seconds > 0:
            self._block(keys=[self._block_key], args=[int(seconds * 1_000_000)])
            log.info("rate limiter %s blocked for %.1f s", self.key, seconds)
