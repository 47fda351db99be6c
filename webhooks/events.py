"""`POST /webhooks/events`: canonical events signed per Standard Webhooks.

The view does three things: verify the signature, validate the schema, enqueue
one job for the whole batch — and answers 202 only once that job is in Redis.
"""

from __future__ import annotations

import json
import logging

import redis
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from rules.errors import SchemaError
from rules.events import parse_batch
from webhooks.app import error, services
from webhooks.errors import QueueUnavailable, SignatureError
from webhooks.metrics import count_received
from webhooks.signatures import decode_secret, verify
from worker.queues import enqueue_events

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)


@bp.post("/webhooks/events")
def receive_events() -> ResponseReturnValue:
    """Verify, validate and queue a batch of canonical events."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    secret = svc.config.webhook_secret
    if secret is None:
        return error(503, "not_configured", "PRUNER_WEBHOOK_SECRET is not set, so signed events cannot be verified")
    body = request.get_data(cache=False)
    now = svc.clock()
    try:
        verify(body, request.headers, decode_secret(secret), now)
    except SignatureError as exc:
        return error(401, "bad_signature", str(exc))
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, "malformed_json", f"the body is not valid JSON: {exc}")
    try:
        events = parse_batch(decoded, now_ms=int(now * 1000))
    except SchemaError as exc:
        return error(400, "invalid_event", str(exc))
    try:
        enqueue_events(svc.queue, [e.to_wire() for e in events], source="events")
    except redis.RedisError as exc:
        log.warning("enqueue failed: %s", type(exc).__name__)
        raise QueueUnavailable("the queue (Redis) is unavailable; nothing was accepted, retry later") from None
    count_received("events", [e.type.value for e in events])
    return jsonify(accepted=len(events)), 202
