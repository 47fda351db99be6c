"""Operator routes behind `PRUNER_ADMIN_TOKEN`: `GET /leads` and `GET /leads/<crm>/<lead_id>`."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from rules.counters import LoggedEvent, fold
from rules.events import Crm, format_ms
from webhooks.app import error, services
from worker import gdpr, leadindex
from worker.checkpoint import Stored

bp = Blueprint("admin", __name__)


def admin_only(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """Refuse the request unless it carries `Authorization: Bearer <PRUNER_ADMIN_TOKEN>`."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        token = services(current_app._get_current_object()).config.admin_token  # type: ignore[attr-defined]
        if token is None:
            return error(503, "not_configured", "PRUNER_ADMIN_TOKEN is not set, so admin routes are off")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return error(401, "unauthorized", "send Authorization: Bearer <PRUNER_ADMIN_TOKEN>")
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            return error(401, "unauthorized", "the admin token is wrong")
        return view(*args, **kwargs)

    return guarded


@bp.get("/leads")
@admin_only
def leads() -> ResponseReturnValue:
    """List leads, newest change first, one page at a time (ids and lifecycle only)."""
    repeated = next((name for name in request.args if len(request.args.getlist(name)) > 1), None)
    if repeated is not None:
        return error(400, "bad_parameter", f"{repeated:.60} is given more than once; give each parameter once")
    try:
        query = leadindex.parse_query(request.args.to_dict())
    except leadindex.QueryError as exc:
        return error(400, "bad_parameter", str(exc))
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    found = leadindex.page(svc.redis, query.filters, query.limit, query.cursor)
    return jsonify(
        leads=[row.public() for row in found.rows],
        next_cursor=found.next_cursor,
        # False until `pruner leads --backfill` (or the clock) indexed leads stored before the index.
        index_complete=leadindex.is_complete(svc.redis),
    )


@bp.get("/leads/<crm>/<path:lead_id>")
@admin_only
def lead(crm: str, lead_id: str) -> ResponseReturnValue:
    """Show one lead's state, counters and decisions."""
    if crm not in {c.value for c in Crm}:
        return error(404, "unknown_crm", f"crm must be one of {[c.value for c in Crm]}, got {crm!r:.40}")
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    store = svc.store
    if svc.config.suppression_key and is_erased(svc.redis, svc.config.suppression_key.encode(), crm, lead_id):
        return jsonify(crm=crm, lead_id=lead_id, state="SUPPRESSED", erased=True)
    history = store.history(crm, lead_id)
    if history is None:
        return error(404, "unknown_lead", "no events have been received for this lead")
    return jsonify(lead_document(crm, lead_id, history, store.state(crm, lead_id), store.checkpoint(crm, lead_id)))


def is_erased(connection: redis.Redis, key: bytes, crm: str, lead_id: str) -> bool:
    """Say whether this lead was erased (its keyed hash is on the suppression list)."""
    return bool(connection.sismember(gdpr.SUPPRESSED_KEY, gdpr.lead_hash(key, crm, lead_id)))


def lead_document(
    crm: str, lead_id: str, history: list[LoggedEvent], state: dict[str, Any] | None, checkpoint: Stored | None = None
) -> dict[str, Any]:
    """Build the docs/http.md `/leads/<crm>/<lead_id>` answer (also printed by `pruner explain --format json`).

    `progress`: how far the lead is from each count-based rule, as its last evaluation
    counted (empty for a lead not evaluated since the upgrade to checkpoints).
    """
    counters = fold(history)
    state = state or {}
    return {
        "crm": crm,
        "lead_id": lead_id,
        "state": state.get("state", "ACTIVE"),
        "loss_reason": state.get("loss_reason"),
        "counters": counters.public(),
        "decisions": state.get("decisions", []),
        "next_due": state.get("next_due"),
        "events": len(history),
        "last_event_at": format_ms(counters.last_event_ms) if counters.last_event_ms is not None else None,
        "profile": {"source": counters.source, "segment": counters.segment, "priority": counters.priority},
        "progress": checkpoint.progress if checkpoint is not None else {},
    }
