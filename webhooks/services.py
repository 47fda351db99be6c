"""What the views share: the per-process services, the JSON error body, and the admission check.

Its own module so that the blueprints import it, and the app factory imports the blueprints,
without anything importing the factory back (the Flask tutorial's layout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import Flask, Request, jsonify
from flask.typing import ResponseReturnValue
from rq import Queue

from webhooks.backpressure import RETRY_AFTER_S, Backpressure
from webhooks.errors import ApiError
from webhooks.ratelimit import InboundRateLimit, RateRefusal
from worker.config import Config
from worker.store import LeadStore

MAX_BODY_BYTES = 1024 * 1024


@dataclass
class Services:
    """What the views need, built once per process and hung on `app.extensions`."""

    config: Config
    redis: redis.Redis
    queue: Queue
    store: LeadStore
    clock: Callable[[], float]
    backpressure: Backpressure
    rate_limit: InboundRateLimit


def services(app: Flask) -> Services:
    svc: Services = app.extensions["pruner"]
    return svc


def error(status: int, code: str, detail: str, headers: list[tuple[str, str]] | None = None) -> ResponseReturnValue:
    """Return the JSON error body docs/http.md fixes: `{"error", "detail"}`."""
    return jsonify(error=code, detail=detail), status, headers or []


@dataclass(frozen=True)
class Refusal:
    """A webhook refused before it is read: the sender should retry after `retry_after_s`."""

    status: int
    code: str
    detail: str
    retry_after_s: int


def admission(svc: Services, route: str, req: Request) -> Refusal | None:
    """Refuse a flooding sender (429), then work Redis could not keep or the workers reach soon (503).

    The rate limit comes first: it costs a few microseconds and no Redis, so a flood is
    turned away before the signature check or any Redis read.
    """
    limited: RateRefusal | None = svc.rate_limit.refusal(route, req)
    if limited is not None:
        return Refusal(429, "rate_limited", limited.detail, limited.retry_after_s)
    reason = svc.backpressure.reason()
    return None if reason is None else Refusal(503, "backpressure", reason, RETRY_AFTER_S)


def admit(svc: Services, route: str, req: Request) -> None:
    """Raise the JSON refusal of a webhook (see `admission`) with its `Retry-After`; return to go on."""
    refused = admission(svc, route, req)
    if refused is not None:
        raise ApiError(refused.status, refused.code, refused.detail, [("Retry-After", str(refused.retry_after_s))])
