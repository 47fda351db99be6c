"""`GET /metrics`: Prometheus exposition for the web process and, via Redis, the workers.

Web-side numbers (events received and rejected, webhook latency) use prometheus-client,
in multiprocess mode when gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR. Queue health
and worker-side aggregates (decisions, CRM calls, lag) are read from Redis at scrape
time by a custom collector, so they are right however many worker dynos run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from rq import Queue

from rules.events import Crm
from worker import metrics as worker_metrics
from worker import queuehealth, redisinfo

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

bp = Blueprint("metrics", __name__)

# Per source only: the workers count what they apply per source and type
# (pruner_events_applied_total), and a per-type tally here cost the ingest path ~20 us a request.
EVENTS_RECEIVED = Counter("pruner_events_received_total", "Events accepted and queued", ["source"])
EVENTS_REJECTED = Counter("pruner_events_rejected_total", "Requests refused", ["source", "reason"])
EVENTS_IGNORED = Counter(
    "pruner_events_ignored_total", "CRM events acknowledged but not mapped (e.g. unknown subscription types)",
    ["source", "kind"],
)  # fmt: skip
LATENCY = Histogram(
    "pruner_webhook_seconds", "Webhook handling time", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)  # fmt: skip


class RedisCollector(Collector):
    """Queue depth, failures, workers, lag and worker-side counters, read at scrape time."""

    def __init__(self, connection: redis.Redis, queue: Queue) -> None:
        self.connection = connection
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            yield from self._collect()
        except redis.RedisError:
            up = GaugeMetricFamily("pruner_redis_up", "1 when Redis answered the scrape")
            up.add_metric([], 0)
            yield up

    def _collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        q = self.queue
        health = queuehealth.read(self.connection, q, time.time())
        up = GaugeMetricFamily("pruner_redis_up", "1 when Redis answered the scrape")
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("pruner_queue_jobs", "Jobs per queue and registry", labels=["queue", "registry"])
        depth.add_metric([q.name, "queued"], health.queued)
        depth.add_metric([q.name, "started"], health.started)
        depth.add_metric([q.name, "scheduled"], health.scheduled)
        depth.add_metric([q.name, "failed"], health.failed)
        yield depth
        facts = redisinfo.inspect(self.connection)
        headroom = GaugeMetricFamily(
            "pruner_redis_memory_headroom_ratio", "Share of Redis maxmemory still free (1 without a limit)"
        )
        headroom.add_metric([], facts.headroom)
        yield headroom
        evicting = GaugeMetricFamily("pruner_redis_evicting_policy", "1 when maxmemory-policy is not noeviction")
        evicting.add_metric([], 1 if facts.problems else 0)
        yield evicting
        workers = GaugeMetricFamily("pruner_workers", "RQ workers registered on the queue")
        workers.add_metric([], health.workers)
        yield workers
        lag = GaugeMetricFamily("pruner_queue_lag_seconds", "Age of the oldest queued job")
        lag.add_metric([], health.oldest_wait_s)
        yield lag
        last = health.last_batch
        processing = GaugeMetricFamily(
            "pruner_processing_lag_seconds", "Last batch: now - enqueued time, and now - newest event time",
            labels=["kind"],
        )  # fmt: skip
        processing.add_metric(["queue"], last.get("queue_seconds", 0.0))
        processing.add_metric(["event"], last.get("event_seconds", 0.0))
        yield processing
        yield self._hash_counter(
            worker_metrics.DECISIONS_KEY,
            "pruner_decisions",
            "Decisions by rule, target state and loss reason",
            ["rule", "to", "reason"],
        )
        yield self._hash_counter(
            worker_metrics.CRM_CALLS_KEY,
            "pruner_crm_calls",
            "CRM calls by CRM, endpoint and status",
            ["crm", "endpoint", "status"],
        )
        yield self._hash_counter(
            worker_metrics.EVENTS_KEY, "pruner_events_applied", "Events applied by the workers", ["source", "type"]
        )
        yield self._hash_counter(
            worker_metrics.EVALUATIONS_KEY,
            "pruner_lead_evaluations",
            "Lead evaluations by path: continued from a checkpoint, a full replay of the log, or a new lead",
            ["path"],
        )
        yield self._hash_counter(
            worker_metrics.RETENTION_KEY,
            "pruner_retention_events",
            "Events folded into their lead's running state past the retention horizon (folded), and late events "
            "ignored for being dated before a lead's fold (past_horizon: above 0, something delivers very late)",
            ["what"],
        )
        yield self._hash_counter(
            worker_metrics.REFUSED_KEY,
            "pruner_actions_refused",
            "CRM actions the CRM refused for good, kept in pruner:dead:{crm} (a refused break-up task leaves its "
            "lead waiting in BREAKUP_DUE)",
            ["crm", "kind"],
            known=[(crm.value, kind) for crm in Crm for kind in worker_metrics.REFUSED_KINDS],
        )
        yield self._hash_counter(
            worker_metrics.RECONCILED_KEY,
            "pruner_reconciled_events",
            "Events reconciliation read back from the CRM that no webhook had delivered (above 0: webhooks go missing)",
            ["object"],
            known=[(name,) for name in worker_metrics.RECONCILED_OBJECTS],
        )

    def _hash_counter(
        self, key: str, name: str, doc: str, labels: list[str], known: Iterable[tuple[str, ...]] = ()
    ) -> CounterMetricFamily:
        """A counter per hash field ("a|b" for labels a, b); `known` label values start at 0."""
        family = CounterMetricFamily(name, doc, labels=labels)
        raw: dict[bytes, bytes] = self.connection.hgetall(key)  # type: ignore[assignment]
        counts = {tuple(field.decode().split("|")): float(value) for field, value in raw.items()}
        for parts in [*(k for k in known if k not in counts), *counts]:
            if len(parts) == len(labels):
                family.add_metric(list(parts), counts.get(parts, 0.0))
        return family


def registry_for(connection: redis.Redis, queue: Queue) -> CollectorRegistry:
    """Build the registry /metrics serves."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for collector in (EVENTS_RECEIVED, EVENTS_REJECTED, EVENTS_IGNORED, LATENCY):
            registry.register(collector)
    registry.register(RedisCollector(connection, queue))
    return registry


class WebhookTimer:
    """WSGI middleware: time every `/webhooks/` request and count the refused ones.

    Wraps `app.wsgi_app` rather than using Flask's before/after hooks, which cost the
    ingest hot path ~20 us per request (each hook goes through `ensure_sync` and the
    request-context proxies). Timing here also covers Flask's own dispatch. Requests are
    labelled by the route their path names, never the raw path: made-up `/webhooks/...`
    URLs must not each mint a new time series.
    """

    def __init__(self, app: WSGIApplication, routes: Iterable[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith("/webhooks/"):
            return self.app(environ, start_response)
        route = path if path in self.routes else "unmatched"
        started = time.perf_counter()
        statuses: list[str] = []

        def remember(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, remember)
        finally:
            _latency(route).observe(time.perf_counter() - started)
            status = statuses[-1][:3] if statuses else "500"
            if status >= "400":
                EVENTS_REJECTED.labels(route.rsplit("/", 1)[-1], status).inc()


def instrument(app: Flask) -> None:
    """Time and count `app`'s webhook requests (call once the webhook routes are registered)."""
    routes = [rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/webhooks/")]
    if any("<" in route for route in routes):
        # Labels come from matching the path exactly, which a variable part would defeat.
        raise ValueError(f"webhook routes must be fixed paths to be timed, got {routes}")
    app.wsgi_app = WebhookTimer(app.wsgi_app, routes)  # type: ignore[method-assign]


# Labelled children looked up once per process: `labels()` validates and locks on every
# call, ~4 us each, several times per request on the ingest hot path. Label values are
# few and fixed (routes, sources, event types), so the caches stay small.
@lru_cache(maxsize=64)
def _latency(route: str) -> Any:
    return LATENCY.labels(route)


@lru_cache(maxsize=16)
def _received(source: str) -> Any:
    return EVENTS_RECEIVED.labels(source)


@bp.get("/metrics")
def metrics() -> Response:
    """Serve the Prometheus text exposition."""
    svc = current_app.extensions["pruner"]
    registry = current_app.extensions.setdefault("pruner_metrics", registry_for(svc.redis, svc.queue))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def count_received(source: str, count: int) -> None:
    """Count the events one request had accepted and queued."""
    if count:
        _received(source).inc(count)


def count_ignored(source: str, kinds: Mapping[str, int]) -> None:
    """Count CRM events acknowledged without mapping them (a 4xx would make the CRM retry for a day)."""
    for kind, n in kinds.items():
        EVENTS_IGNORED.labels(source, kind.split(":", 1)[0]).inc(n)
