"""`POST /webhooks/hubspot`: HubSpot Webhooks API batches, signed v3 (or v1/v2 when told).

Verify over the raw bytes and the URL HubSpot called, map to canonical events and
operations (rules/hubspot_map.py), queue one job, answer 204 only once it is in Redis.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import msgspec
import redis
from flask import Blueprint, Request, current_app, request
from flask.typing import ResponseReturnValue

from rules.errors import SchemaError
from rules.hubspot_map import parse_hubspot_batch
from webhooks.errors import ApiError, QueueUnavailable, SignatureError, not_json
from webhooks.hubspot_signatures import verify
from webhooks.metrics import count_ignored, count_received
from webhooks.services import admit, services
from worker.policyfile import cached_policy
from worker.queues import enqueue_events

log = logging.getLogger(__name__)

bp = Blueprint("hubspot", __name__)


def signed_uri(req: Request, trust_proxy: bool) -> str:
    """Rebuild the URL as HubSpot saw it: scheme, host, raw path and query."""
    scheme, host = req.scheme, req.host
    if trust_proxy:
        scheme = req.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        host = req.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    raw = req.environ.get("RAW_URI") or req.environ.get("REQUEST_URI")
    if not raw:
        raw = quote(req.path)
        if req.query_string:
            raw += "?" + req.query_string.decode("latin-1")
    return f"{scheme}://{host}{raw}"


@bp.post("/webhooks/hubspot")
def receive_hubspot() -> ResponseReturnValue:
    """Verify, map and queue a HubSpot webhook batch."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    secret = svc.config.hubspot_client_secret
    if secret is None:
        raise ApiError(
            503, "not_configured", "HUBSPOT_CLIENT_SECRET is not set, so HubSpot signatures cannot be checked"
        )
    admit(svc, request.path, request)
    body = request.get_data(cache=False)
    now_ms = int(svc.clock() * 1000)
    try:
        uri = signed_uri(request, svc.config.trust_proxy)
        verify(
            body, request.headers, secret.split(), request.method, uri, now_ms, svc.config.hubspot_signature_versions
        )
    except SignatureError as exc:
        raise ApiError(401, "bad_signature", str(exc)) from None
    try:
        # msgspec, not json.loads: it also refuses unpaired surrogate escapes ("\ud800"),
        # text no Redis key or CRM field could hold, which would fail the batch in the worker.
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # bad UTF-8 in a string: the 2nd
        raise not_json(exc) from None
    try:
        batch = parse_hubspot_batch(decoded, now_ms, cached_policy(svc.config.policy_path).hubspot)
    except SchemaError as exc:
        raise ApiError(400, "invalid_event", str(exc)) from None
    if batch.ignored:
        # Acknowledged, never a 4xx (HubSpot would retry for 24 h); counts only, no ids.
        log.info("hubspot events ignored: %s", dict(batch.ignored))
        count_ignored("hubspot", batch.ignored)
    if batch.events or batch.ops:
        try:
            enqueue_events(svc.queue, [e.to_wire() for e in batch.events], source="hubspot", ops=batch.ops)
        except redis.RedisError as exc:
            log.warning("enqueue failed: %s", type(exc).__name__)
            raise QueueUnavailable("the queue (Redis) is unavailable; nothing was accepted, retry later") from None
    count_received("hubspot", len(batch.events))
    return "", 204
