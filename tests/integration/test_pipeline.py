"""End to end over real HTTP: gunicorn -> Redis -> RQ worker process -> /leads."""

from __future__ import annotations

import random
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests

from tests.helpers import batch_body, event, signed_headers
from tests.integration.support import (
    REDIS_URL,
    base_env,
    drained,
    get_lead,
    send,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from worker.queues import enqueue_events, make_queue

pytestmark = pytest.mark.integration
T0 = datetime.now(tz=UTC) - timedelta(days=3)


def history() -> list[dict[str, Any]]:
    kinds = [
        "email_sent",
        "email_sent",
        "call_attempted",
        "email_replied",
        "email_sent",
        "call_attempted",
        "call_attempted",
        "email_sent",
    ]
    return [event(k, lead_id="e2e-1", at=T0 + timedelta(hours=i), event_id=f"e2e-{i}") for i, k in enumerate(kinds)]


def test_shuffled_duplicated_batches_count_once(
    web: str, worker: subprocess.Popen[bytes], redis_db: redis.Redis
) -> None:
    events = history()
    delivery = events + random.Random(7).sample(events, 5)
    random.Random(3).shuffle(delivery)
    for chunk in (delivery[:4], delivery[4:9], delivery[9:]):
        response = send(web, chunk)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": len(chunk)}
    wait_until(lambda: get_lead(web, "e2e-1").status_code == 200 and get_lead(web, "e2e-1").json()["events"] == 8)
    wait_until(drained(redis_db))
    body = get_lead(web, "e2e-1").json()
    assert body["state"] == "ACTIVE" and body["loss_reason"] is None and body["decisions"] == []
    counters = body["counters"]
    assert counters["outbound_touches"] == 7
    assert counters["replies"] == 1
    assert counters["follow_ups_since_reply"] == 4  # the four touches after the reply
    assert counters["call_attempts"] == 3
    # /metrics under gunicorn (multiprocess mode) shows what came in and what the worker applied.
    scraped = requests.get(f"{web}/metrics", timeout=10).text
    assert 'pruner_events_received_total{source="events"}' in scraped
    assert 'pruner_events_applied_total{source="events",type="email_sent"}' in scraped
    assert 'pruner_queue_jobs{queue="pruner",registry="failed"} 0.0' in scraped
    # A full redelivery (the CRM retrying everything) changes nothing.
    assert send(web, events).status_code == 202
    wait_until(drained(redis_db))
    assert get_lead(web, "e2e-1").json()["counters"] == counters
    # `drained` also proved that finished jobs left no payload (result_ttl=0): lead ids
    # do not linger in Redis job hashes.


def test_two_workers_on_the_same_leads_lose_nothing(web: str, redis_db: redis.Redis) -> None:
    workers = [start_worker(), start_worker()]
    try:
        sent = 0
        for b in range(30):
            batch = [
                event("email_sent", lead_id=f"hot-{i % 3}", at=T0 + timedelta(seconds=b * 100 + i)) for i in range(30)
            ]
            assert send(web, batch).status_code == 202
            sent += len(batch)
        wait_until(drained(redis_db), seconds=60)
        totals = [get_lead(web, f"hot-{i}").json()["counters"]["outbound_touches"] for i in range(3)]
        assert totals == [300, 300, 300]
        assert sum(totals) == sent
    finally:
        for proc in workers:
            stop(proc)


@pytest.mark.parametrize(
    ("mutate", "status", "detail"),
    [
        ("tampered", 401, "does not match"),
        ("unsigned", 401, "missing header"),
        ("stale", 401, "s old"),
        ("oversized", 413, "larger than"),
        ("malformed", 400, "not valid JSON"),
        ("unknown-type", 400, "events[0].type must be one of the canonical types"),
        ("missing-field", 400, "events[0].occurred_at is required"),
    ],
)
def test_bad_input_over_http_is_refused_and_nothing_queued(
    web: str, redis_db: redis.Redis, mutate: str, status: int, detail: str
) -> None:
    body = batch_body([event()])
    headers = signed_headers(body)
    if mutate == "tampered":
        body = body.replace(b"hubspot", b"salesforce")
    elif mutate == "unsigned":
        headers = {"content-type": "application/json"}
    elif mutate == "stale":
        headers = signed_headers(body, timestamp=int(time.time()) - 3600)
    elif mutate == "oversized":
        body = b"{" + b" " * (1024 * 1024) + b"}"
        headers = signed_headers(body)
    elif mutate == "malformed":
        body = b"{nope"
        headers = signed_headers(body)
    elif mutate == "unknown-type":
        body = batch_body([event("smoke_signal")])
        headers = signed_headers(body)
    elif mutate == "missing-field":
        body = batch_body([{k: v for k, v in event().items() if k != "occurred_at"}])
        headers = signed_headers(body)
    response = requests.post(f"{web}/webhooks/events", data=body, headers=headers, timeout=10)
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert set(response.json()) == {"error", "detail"}
    assert make_queue(redis_db).count == 0
    assert not list(redis_db.scan_iter("rq:job:*"))


def test_redis_down_means_503_not_202(redis_db: redis.Redis) -> None:
    proc, url = start_web(base_env(REDIS_URL="redis://127.0.0.1:1/0"))
    try:
        wait_http(f"{url}/healthz")
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 503
        response = send(url, [event()])
        assert response.status_code == 503
        assert "retry later" in response.json()["detail"]
    finally:
        stop(proc)


def test_enqueue_reconnects_when_redis_dropped_the_pooled_connection(redis_db: redis.Redis) -> None:
    # What a Redis restart, failover or idle timeout does to the web's pooled connection.
    client = redis.Redis.from_url(REDIS_URL)
    queue = make_queue(client)
    enqueue_events(queue, [["e1", "email_sent", "hubspot", "L1", 5, {}]], "events")
    assert redis_db.client_kill_filter(_id=client.client_id()) == 1
    enqueue_events(queue, [["e2", "email_sent", "hubspot", "L1", 6, {}]], "events")
    assert [job.args[0][0][0] for job in queue.jobs] == ["e1", "e2"]


def test_jobs_queued_by_the_previous_version_still_run(
    web: str, worker: subprocess.Popen[bytes], redis_db: redis.Redis
) -> None:
    # A rolling upgrade: the old web queued `process_body` jobs (the batch as JSON text).
    body = batch_body([event("email_sent", lead_id="legacy-1", event_id=f"legacy-{n}") for n in range(3)])
    make_queue(redis_db).enqueue("worker.jobs.process_body", body.decode(), source="events", result_ttl=0)
    wait_until(lambda: get_lead(web, "legacy-1").status_code == 200)
    wait_until(drained(redis_db))
    assert get_lead(web, "legacy-1").json()["counters"]["outbound_touches"] == 3
