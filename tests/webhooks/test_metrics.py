"""/metrics: web counters and queue health from Redis."""

from __future__ import annotations

import fakeredis
from flask.testing import FlaskClient

from tests.helpers import batch_body, event, signed_headers
from worker import metrics as worker_metrics


def received(client: FlaskClient, source: str) -> float:
    prefix = f'pruner_events_received_total{{source="{source}"}} '
    lines = client.get("/metrics").get_data(as_text=True).splitlines()
    return sum(float(line[len(prefix) :]) for line in lines if line.startswith(prefix))


def test_metrics_show_received_events_and_queue_depth(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    before = received(client, "events")  # counters live as long as the test process
    body = batch_body([event("email_sent"), event("email_sent"), event("call_attempted")])
    assert client.post("/webhooks/events", data=body, headers=signed_headers(body)).status_code == 202
    bad = batch_body([event("nonsense")])
    assert client.post("/webhooks/events", data=bad, headers=signed_headers(bad)).status_code == 400
    worker_metrics.record_batch(
        fake_redis, [("repeated_no", "LOST", "not_interested")], [("events", "email_sent")], None, None
    )
    worker_metrics.count_crm_call(fake_redis, "hubspot", "/crm/v3/objects/contacts/batch/update", 200)
    text = client.get("/metrics").get_data(as_text=True)
    assert received(client, "events") == before + 3  # accepted events only, not the refused batch
    assert 'pruner_events_rejected_total{reason="400",source="events"}' in text
    assert 'pruner_queue_jobs{queue="pruner",registry="queued"} 1.0' in text
    assert 'pruner_decisions_total{reason="not_interested",rule="repeated_no",to="LOST"} 1.0' in text
    assert 'pruner_crm_calls_total{crm="hubspot",endpoint="/crm/v3/objects/contacts/batch/update",status="200"}' in text
    assert "pruner_webhook_seconds_bucket" in text
    assert "pruner_redis_up 1.0" in text


def test_made_up_webhook_paths_share_one_series(client: FlaskClient) -> None:
    for n in range(5):
        assert client.post(f"/webhooks/made-up-{n}", data=b"{}").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert "made-up" not in text
    assert 'pruner_events_rejected_total{reason="404",source="unmatched"}' in text
    assert 'pruner_webhook_seconds_count{route="unmatched"}' in text


def test_crm_endpoints_are_counted_without_record_ids() -> None:
    from worker.metrics import endpoint_template

    cases = {
        "/crm/v3/objects/deals/deal-4242424242": "/crm/v3/objects/deals/{id}",
        "/crm/v3/objects/contacts/51000476449?properties=email": "/crm/v3/objects/contacts/{id}",
        "/communication-preferences/v4/statuses/ada%40example.com/unsubscribe": (
            "/communication-preferences/v4/statuses/{id}/unsubscribe"
        ),
        "/services/data/v59.0/sobjects/Lead/00Q5e00000AbCdEFGH": "/services/data/v59.0/sobjects/Lead/{id}",
        "/services/data/v59.0/composite/sobjects": "/services/data/v59.0/composite/sobjects",
        "/services/oauth2/token": "/services/oauth2/token",
    }
    assert {path: endpoint_template(path) for path in cases} == cases


def test_refusals_are_timed_and_counted_under_the_route_named(client: FlaskClient) -> None:
    def series(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    before = client.get("/metrics").get_data(as_text=True)
    assert client.get("/webhooks/events").status_code == 405  # a real route, wrong method
    assert client.post("/webhooks/events", data=b"{}").status_code == 401  # unsigned
    assert client.get("/healthz").status_code == 200  # not a webhook: not timed
    after = client.get("/metrics").get_data(as_text=True)
    for name, moved in (
        ('pruner_events_rejected_total{reason="405",source="events"}', 1),
        ('pruner_events_rejected_total{reason="401",source="events"}', 1),
        ('pruner_webhook_seconds_count{route="/webhooks/events"}', 2),
        ('pruner_webhook_seconds_count{route="/healthz"}', 0),
    ):
        assert series(after, name) - series(before, name) == moved, name


def test_metrics_show_what_reconciliation_recovered(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    assert 'pruner_reconciled_events_total{object="calls"} 0.0' in client.get("/metrics").get_data(as_text=True)
    fake_redis.hincrby(worker_metrics.RECONCILED_KEY, "calls", 4)  # what worker/reconcile.py writes
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pruner_reconciled_events_total{object="calls"} 4.0' in text


def test_metrics_show_the_actions_a_crm_refused(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.hincrby(worker_metrics.REFUSED_KEY, "hubspot|breakup_task", 2)  # what the drain writes
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pruner_actions_refused_total{crm="hubspot",kind="breakup_task"} 2.0' in text


def test_refusals_and_recoveries_are_exported_at_zero_before_the_first(client: FlaskClient) -> None:
    """A series born at 1 shows no increase() to Prometheus: the alert on the first one would stay
    silent (found by a second reader). Every label they can take starts at 0."""
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pruner_actions_refused_total{crm="hubspot",kind="breakup_task"} 0.0' in text
    assert 'pruner_actions_refused_total{crm="salesforce",kind="mark_lost"} 0.0' in text
    assert 'pruner_reconciled_events_total{object="contacts"} 0.0' in text
    assert 'pruner_reconciled_events_total{object="Opportunity"} 0.0' in text


def test_the_labels_exported_at_zero_are_the_ones_counted() -> None:
    from rules.salesforce_map import SOBJECTS
    from rules.states import ActionKind
    from worker.actions import FORWARD_ERASURE
    from worker.reconcile import ENGAGEMENTS, RECORD_MODIFIED

    assert set(worker_metrics.RECONCILED_OBJECTS) == {*ENGAGEMENTS, *RECORD_MODIFIED, *SOBJECTS}
    assert set(worker_metrics.REFUSED_KINDS) == {*(kind.value for kind in ActionKind), FORWARD_ERASURE}
