"""gunicorn settings for the `web` process (Procfile), friendly to Heroku-like platforms."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from gunicorn.glogging import Logger

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
# Sync workers: each request is short (verify, validate, one Redis round trip), so
# processes beat threads for CPU-bound signature and schema checks under the GIL.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "sync"
# HubSpot gives up after 5 s; nothing here should take longer than a hung Redis (2 s).
timeout = 20
# Platforms send SIGTERM and SIGKILL 30 s later: finish in-flight requests well before.
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
# Requests carry no personal data in the URL except /leads ids: log the path, not the query.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'


class QuietProbes(Logger):
    """gunicorn's logger without access lines for healthy probes (platforms poll every few seconds)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if req.path in ("/healthz", "/readyz") and str(resp.status).startswith("200"):
            return
        super().access(resp, req, environ, request_time)


logger_class = QuietProbes
# Only honour X-Forwarded-* from the platform's router when told to.
forwarded_allow_ips = "*" if os.environ.get("PRUNER_TRUST_PROXY") == "1" else "127.0.0.1"

# prometheus-client's multiprocess mode: each gunicorn worker writes its counters to
# files here and /metrics sums them. Set before any worker imports prometheus_client.
_OWN_METRICS_DIR = None
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    import tempfile

    _OWN_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pruner-prometheus-")


def on_exit(server: object) -> None:
    """Remove the metrics directory this process made (never one the operator set)."""
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live gauges (counters keep their totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
