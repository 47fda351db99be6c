"""`POST /webhooks/events`: canonical events signed per Standard Webhooks.

The view does three things: verify the signature, validate the schema, enqueue
one job for the whole batch — and answers 202 only once that job is in Redis.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis
from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from rules.errors import SchemaError
from rules.events import Event
from rules.fastparse import fast_count, parse_body
from webhooks.errors import ApiError, QueueUnavailable, SignatureError, not_json
from webhooks.metrics import count_received
from webhooks.services import admit, services
from webhooks.signatures import verify
from worker.queues import enqueue_batch, enqueue_events
from worker.secrets import decode_secrets

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)


@lru_cache(maxsize=4)
def _keys(secret: str) -> tuple[bytes, ...]:
    # Validated at startup (Config); decoding once per process is enough. Several secrets,
    # space-separated, while one is rotated (Standard Webhooks' multi-signature model).
    return decode_secrets(secret)


def _validate(body: bytes, now_ms: int) -> tuple[int, list[Event] | None]:
    """Count the batch's events; parse them too when only the slow validator accepts the body.

    The fast path (msgspec) takes nearly every batch. What it declines, `parse_body` either
    accepts — a UTF-16 body, say, which cannot be queued as it came — or rejects, naming the field.
    """
    count = fast_count(body, now_ms)
    if count is not None:
        return count, None
    events = parse_body(body, now_ms)
    return len(events), events


@bp.post("/webhooks/events")
def receive_events() -> ResponseReturnValue:
    """Verify, validate and queue a batch of canonical events."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    secret = svc.config.webhook_secret
    if secret is None:
        raise ApiError(503, "not_configured", "PRUNER_WEBHOOK_SECRET is not set, so signed events cannot be verified")
    admit(svc, request.path, request)
    body = request.get_data(cache=False)
    now = svc.clock()
    try:
        verify(body, request.headers, _keys(secret), now)
    except SignatureError as exc:
        raise ApiError(401, "bad_signature", str(exc)) from None
    try:
        count, parsed = _validate(body, int(now * 1000))
    except SchemaError as exc:
        raise ApiError(400, "invalid_event", str(exc)) from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # json.loads (the slow path) may recurse
        raise not_json(exc) from None
    try:
        if parsed is None:
            enqueue_batch(svc.queue, body, count, source="events")  # validated whole: queued as it came
        else:
            enqueue_events(svc.queue, [e.to_wire() for e in parsed], source="events")
    except redis.RedisError as exc:
        log.warning("enqueue failed: %s", type(exc).__name__)
        raise QueueUnavailable("the queue (Redis) is unavailable; nothing was accepted, retry later") from None
    count_received("events", count)
    # The hot path's answer, without jsonify's machinery.
    return Response(b'{"accepted":%d}\n' % count, status=202, mimetype="application/json")
