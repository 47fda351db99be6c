"""RQ's own dashboard (rq-dashboard) at `/rq`, behind the admin check, on Pruner's Redis and JSON jobs."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer

from webhooks.dashboard import RQ_PREFIX, check_admin
from webhooks.services import services


def mount_rq_dashboard(app: Flask) -> None:
    """Serve rq-dashboard at /rq behind the admin check, on Pruner's Redis, reading JSON-serialized jobs."""
    # Here, not at the top: rq-dashboard (and its Flask blueprint) loads only when the app is built.
    import rq_dashboard
    from rq_dashboard import web as rq_web

    svc = services(app)
    # rq-dashboard keeps its serializer in a module-level config; its own CLI sets it the same way.
    rq_web.config.serializer = JSONSerializer
    app.config["RQ_DASHBOARD_REDIS_URL"] = (svc.config.redis_url,)
    app.config["RQ_DASHBOARD_SHOW_FULL_ARGS"] = False  # job arguments name leads and carry emails
    # Deleting a queued process_events job would drop events already acknowledged to the CRM.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True
    setattr(app, "redis_conn", svc.redis)  # noqa: B010 (rq-dashboard reads this attribute)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=RQ_PREFIX)

    # First of the blueprint's own before_request functions, so nothing of rq-dashboard runs
    # for a caller without the token; scoped to it, so other routes do not pay for the check.
    def _guard_rq() -> ResponseReturnValue | None:
        return check_admin()

    app.before_request_funcs.setdefault("rq_dashboard", []).insert(0, _guard_rq)

    # Runs after rq-dashboard's own before_request, which builds a client from the URL on
    # some routes: use ours instead (timeouts, `rediss://` with self-signed certificates).
    def _pin_connection() -> None:
        setattr(current_app, "redis_conn", services(current_app._get_current_object()).redis)  # type: ignore[attr-defined] # noqa: B010

    app.before_request_funcs.setdefault("rq_dashboard", []).append(_pin_connection)
    app.view_functions["rq_dashboard.list_workers"] = _rq_workers


def _rq_workers(instance_number: int) -> ResponseReturnValue:
    """Answer rq-dashboard's workers.json (its own reads busy workers' jobs with pickle and shows their arguments)."""
    connection = services(current_app._get_current_object()).redis  # type: ignore[attr-defined]
    workers = []
    for worker in Worker.all(connection=connection, serializer=JSONSerializer):
        try:
            job = worker.get_current_job()
        except NoSuchJobError:
            job = None
        current: str | dict[str, Any] = "idle"
        if job is not None:
            # The description, not the call string: arguments hold lead ids and emails.
            current = {
                "job_id": job.id,
                "description": job.description,
                "created_at": job.created_at.isoformat() if job.created_at else None,
                "call_string": job.description,
            }
        state = worker.get_state()
        workers.append(
            {
                "name": worker.name,
                "pid": worker.pid,
                "queues": [q.name for q in worker.queues],
                "state": getattr(state, "value", str(state)),
                "current_job": current,
                "last_heartbeat": worker.last_heartbeat,
                "birth_date": worker.birth_date,
                "successful_job_count": worker.successful_job_count,
                "failed_job_count": worker.failed_job_count,
                "total_working_time": worker.total_working_time,
                "version": getattr(worker, "version", ""),
                "python_version": getattr(worker, "python_version", ""),
            }
        )
    workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return jsonify(workers=workers), 200, {"Cache-Control": "no-store"}
