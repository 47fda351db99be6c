"""Liveness and readiness for the platform."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from webhooks.services import services
from worker.redisinfo import inspect

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 while the process lives."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Answer 200 when Redis answers, 503 otherwise (via the RedisError handler), with its health facts."""
    facts = inspect(services(current_app._get_current_object()).redis)  # type: ignore[attr-defined]
    return jsonify(
        status="ready",
        redis={
            "maxmemory_policy": facts.policy,
            "memory_headroom": round(facts.headroom, 3),
            "aof": facts.aof,
            "rdb": facts.rdb,
            "problems": facts.problems,
            "warnings": facts.warnings,
        },
    )
