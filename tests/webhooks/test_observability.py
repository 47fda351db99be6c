"""deploy/: the Prometheus alerts and the Grafana dashboard use only metrics /metrics exports.

The exported names come from a real scrape of the app (fakeredis, after a webhook request
and a worker batch have produced samples), not from a list kept by hand, so renaming a
metric in webhooks/metrics.py without updating deploy/ fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import fakeredis
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import batch_body, event, require_tool, signed_headers
from webhooks.metrics import count_ignored
from worker import metrics as worker_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "pruner.json"
METRIC = re.compile(r"\bpruner_[a-z0-9_]+\b")


def exported_names(client: FlaskClient, conn: fakeredis.FakeRedis) -> set[str]:
    body = batch_body([event()])
    assert client.post("/webhooks/events", data=body, headers=signed_headers(body)).status_code == 202
    assert client.post("/webhooks/events", data=b"{}", headers={"content-type": "application/json"}).status_code == 401
    count_ignored("hubspot", {"company.creation": 1})  # what /webhooks/hubspot calls for unknown types
    decisions = [("unresponsive", "BREAKUP_DUE", "no_response")]
    worker_metrics.record_batch(conn, decisions, [("events", "email_sent")], 0, 0)
    worker_metrics.count_crm_call(conn, "hubspot", "/crm/v3/objects/tasks", 429)
    conn.hincrby(worker_metrics.REFUSED_KEY, "hubspot|breakup_task", 1)  # what the drain writes
    conn.hincrby(worker_metrics.RECONCILED_KEY, "calls", 1)  # what reconciliation writes
    response = client.get("/metrics")
    assert response.status_code == 200
    names = set()
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def alert_exprs() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_alerts_and_panels_use_only_exported_metrics(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    exported = exported_names(client, fake_redis)
    for source, exprs in (("alerts.yml", alert_exprs()), ("pruner.json", dashboard_exprs())):
        assert exprs, f"{source} has no expressions"
        used = {name for expr in exprs for name in METRIC.findall(expr)}
        assert used, f"{source} uses no pruner metric"
        assert used - exported == set(), f"{source} uses metrics /metrics does not export"


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    joined = "\n".join(alert_exprs())
    assert 'registry="failed"' in joined
    assert "pruner_queue_lag_seconds" in joined
    assert 'status="429"' in joined
    assert "pruner_reconciled_events_total" in joined  # webhooks go missing
    assert "pruner_actions_refused_total" in joined  # a refused break-up task leaves its lead waiting


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = require_tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERT_TESTS.parent,
    )
    assert test.returncode == 0, test.stdout + test.stderr
