"""Operator routes behind `PRUNER_ADMIN_TOKEN`: `GET /leads` and `GET /leads/<crm>/<lead_id>`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from rules.events import Crm
from webhooks.auth import bearer_ok
from webhooks.errors import ApiError
from webhooks.services import services
from worker import leadindex, leadquery
from worker.leaddoc import is_erased, lead_document

bp = Blueprint("admin", __name__)


def admin_only(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    """Refuse the request unless it carries `Authorization: Bearer <PRUNER_ADMIN_TOKEN>`."""

    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        token = services(current_app._get_current_object()).config.admin_token  # type: ignore[attr-defined]
        if token is None:
            raise ApiError(503, "not_configured", "PRUNER_ADMIN_TOKEN is not set, so admin routes are off")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <PRUNER_ADMIN_TOKEN>")
        if not bearer_ok(given, token):
            raise ApiError(401, "unauthorized", "the admin token is wrong")
        return view(*args, **kwargs)

    return guarded


@bp.get("/leads")
@admin_only
def leads() -> ResponseReturnValue:
    """List leads, newest change first, one page at a time (ids and lifecycle only)."""
    repeated = next((name for name in request.args if len(request.args.getlist(name)) > 1), None)
    if repeated is not None:
        raise ApiError(400, "bad_parameter", f"{repeated:.60} is given more than once; give each parameter once")
    try:
        query = leadquery.parse_query(request.args.to_dict())
    except leadquery.QueryError as exc:
        raise ApiError(400, "bad_parameter", str(exc)) from None
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    found = leadquery.page(svc.redis, query.filters, query.limit, query.cursor)
    return jsonify(
        leads=[row.public() for row in found.rows],
        next_cursor=found.next_cursor,
        # False until every stored lead is indexed: a store from before the index, or an upgrade rebuilding it.
        index_complete=leadindex.is_complete(svc.redis),
    )


@bp.get("/leads/<crm>/<path:lead_id>")
@admin_only
def lead(crm: str, lead_id: str) -> ResponseReturnValue:
    """Show one lead's state, counters and decisions."""
    if crm not in {c.value for c in Crm}:
        raise ApiError(404, "unknown_crm", f"crm must be one of {[c.value for c in Crm]}, got {crm!r:.40}")
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    store = svc.store
    if svc.config.suppression_key and is_erased(svc.redis, svc.config.suppression_key.encode(), crm, lead_id):
        return jsonify(crm=crm, lead_id=lead_id, state="SUPPRESSED", erased=True)
    log = store.log(crm, lead_id)
    if log is None:
        raise ApiError(404, "unknown_lead", "no events have been received for this lead")
    return jsonify(lead_document(crm, lead_id, log, store.state(crm, lead_id), store.checkpoint(crm, lead_id)))
