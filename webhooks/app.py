"""The Flask app factory: builds clients, registers routes, answers errors in JSON.

Nothing connects at import time; `create_app` is what gunicorn calls
(`gunicorn 'webhooks:create_app()'`). Tests pass a `Config` and a Redis client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from flask import Flask
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

# The blueprints by their modules, not through the package, which imports this module.
from webhooks.admin import bp as admin_bp
from webhooks.backpressure import Backpressure
from webhooks.dashboard import bp as dashboard_bp
from webhooks.errors import ApiError, QueueUnavailable
from webhooks.events import bp as events_bp
from webhooks.health import bp as health_bp
from webhooks.hubspot import bp as hubspot_bp
from webhooks.metrics import bp as metrics_bp
from webhooks.metrics import instrument
from webhooks.ratelimit import InboundRateLimit, parse_limit
from webhooks.rqdash import mount_rq_dashboard
from webhooks.salesforce import bp as salesforce_bp
from webhooks.services import MAX_BODY_BYTES, Services, error
from worker.config import Config
from worker.logs import install_redaction, setup_logging
from worker.queues import connect, make_queue
from worker.store import LeadStore

log = logging.getLogger(__name__)


def create_app(
    config: Config | None = None,
    connection: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the web app from `config` (default: the environment)."""
    install_redaction()
    if not logging.getLogger().handlers:
        # Under gunicorn nothing configured the root logger: JSON lines to stdout, redacted.
        setup_logging()
    config = config or Config.from_env()
    connection = connection or connect(config.redis_url, timeout=config.redis_timeout)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    queue = make_queue(connection, config.queue_name)
    pressure = Backpressure(
        connection, queue, config.backpressure_queue_lag_s, config.backpressure_memory_percent, clock
    )
    limit = InboundRateLimit(
        parse_limit(config.inbound_rate_limit), config.inbound_rate_limit_storage, config.trust_proxy, clock
    )
    app.extensions["pruner"] = Services(config, connection, queue, LeadStore(connection), clock, pressure, limit)

    for bp in (health_bp, events_bp, admin_bp, hubspot_bp, salesforce_bp, metrics_bp, dashboard_bp):
        app.register_blueprint(bp)
    mount_rq_dashboard(app)
    instrument(app)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        detail = {
            413: f"the body is larger than the {MAX_BODY_BYTES} bytes allowed",
            404: "no such route",
            405: "this route does not accept that method",
        }.get(exc.code or 500, exc.description or "request failed")
        # Keep the headers the exception carries (a 405's `Allow`, RFC 9110), but not its HTML type.
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return error(exc.code or 500, code, detail, headers)

    @app.errorhandler(ApiError)
    def refused(exc: ApiError) -> ResponseReturnValue:
        return error(exc.status, exc.code, exc.detail, exc.headers)

    @app.errorhandler(QueueUnavailable)
    def queue_down(exc: QueueUnavailable) -> ResponseReturnValue:
        return error(503, "queue_unavailable", str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> ResponseReturnValue:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error(503, "redis_unavailable", "Redis did not answer; nothing was stored, retry later")

    @app.errorhandler(Exception)
    def crash(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error(500, "internal_error", "the server failed; nothing was acknowledged, retry later")

    return app
