"""The two baselines the ingest benchmark runs beside Pruner's `web`, under the same gunicorn.

- `create_app()`: the cheapest *correct* ingest — verify the Standard Webhooks signature with
  `webhooks.signatures.verify`, store the raw body with one LPUSH, answer 202. Parsing and validation
  would then happen in the worker.
- `create_bare_app()`: read the body and drop it — what Flask + gunicorn cost on their own.

    gunicorn 'bench.baseline_app:create_app()'        # needs REDIS_URL and PRUNER_WEBHOOK_SECRET
    gunicorn 'bench.baseline_app:create_bare_app()'
"""

from __future__ import annotations

import os
import time

import redis
from flask import Flask, Response, jsonify, request
from flask.typing import ResponseReturnValue

from webhooks.errors import SignatureError
from webhooks.signatures import verify
from worker.secrets import decode_secret

RAW_KEY = "bench:raw-batches"
_ACCEPTED = b'{"accepted":true}\n'


def _healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


def create_app() -> Flask:
    """Verify, LPUSH the raw body, answer 202."""
    key = decode_secret(os.environ["PRUNER_WEBHOOK_SECRET"])
    conn = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2.0, socket_connect_timeout=2.0)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.add_url_rule("/healthz", "healthz", _healthz)

    @app.post("/webhooks/events")
    def receive() -> ResponseReturnValue:
        body = request.get_data(cache=False)
        try:
            verify(body, request.headers, key, time.time())
        except SignatureError as exc:
            return jsonify(error="bad_signature", detail=str(exc)), 401
        conn.lpush(RAW_KEY, body)
        return Response(_ACCEPTED, status=202, mimetype="application/json")

    return app


def create_bare_app() -> Flask:
    """Read the body, drop it, answer 202."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.add_url_rule("/healthz", "healthz", _healthz)

    @app.post("/webhooks/events")
    def receive() -> ResponseReturnValue:
        request.get_data(cache=False)
        return Response(_ACCEPTED, status=202, mimetype="application/json")

    return app
