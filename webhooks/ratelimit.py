"""A per-source request rate limit on the webhook routes, so one flooding sender cannot take the web.

Counted per (route, client address) with `limits` (the engine under Flask-Limiter) called
from the views rather than through Flask-Limiter's before/after-request hooks: the hooks
would cost every request on the ingest hot path, this costs one in-memory window update
(~2.5 us). The moving window is exact — no burst of twice the limit across a window edge.

The default storage is the web process's memory, so the limit is per process: with
gunicorn's N workers a sender may reach N times the limit, never less than it — which is the
side to err on, because a refused CRM delivery is only retried later. `PRUNER_INBOUND_RATE_
LIMIT_STORAGE=redis` counts in Redis instead (one more round trip per request, shared by
every process and dyno).

The default, 200 requests a second per sender and route, sits well above what the CRMs send
by their own documentation: HubSpot delivers with at most `maxConcurrentRequests` requests in
flight per app (10 by default; teams raise it to 100), each of up to 100 events, and Salesforce
sends one outbound message per notification batch, per org, retrying with backoff.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.wrappers import Request

DEFAULT_LIMIT = "200/second"


@dataclass(frozen=True)
class RateRefusal:
    """Why a request was refused and when the sender may come back."""

    detail: str
    retry_after_s: int


def parse_limit(spec: str) -> list[RateLimitItem]:
    """Parse `200/second;5000/minute` (limits' notation); `off` or empty: no limit. Raise ValueError."""
    spec = spec.strip()
    if spec.lower() in ("", "off", "0"):
        return []
    return list(parse_many(spec))


def client_address(req: Request, trust_proxy: bool) -> str:
    """The sender's address: the proxy's right-most `X-Forwarded-For` entry when it is trusted.

    The right-most entry is the one the proxy itself appended (Heroku's router, a load
    balancer); those further left are whatever the client claimed and cannot be trusted.
    """
    if trust_proxy:
        forwarded = req.headers.get("X-Forwarded-For", "")
        if forwarded.strip():
            return forwarded.rsplit(",", 1)[-1].strip()
    return req.remote_addr or "unknown"


class InboundRateLimit:
    """Say whether one more request from this sender on this route is within the limit."""

    def __init__(
        self,
        items: list[RateLimitItem],
        storage_uri: str = "memory://",
        trust_proxy: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.items, self.trust_proxy, self.clock = items, trust_proxy, clock
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def refusal(self, route: str, req: Request) -> RateRefusal | None:
        """Count this request; return why it is refused, or None to go on."""
        if not self.items:
            return None
        address = client_address(req, self.trust_proxy)
        for item in self.items:
            if not self.limiter.hit(item, route, address):
                reset_at = self.limiter.get_window_stats(item, route, address).reset_time
                wait = max(1, math.ceil(reset_at - self.clock()))
                # The address is personal data under GDPR: it stays out of the answer and the logs.
                return RateRefusal(
                    f"more than {item.amount} requests per {_per(item)} from this sender to {route}; "
                    f"nothing was accepted, retry in {wait} s",
                    wait,
                )
        return None


def _per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
