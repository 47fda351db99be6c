"""Backpressure: the webhooks refuse with 503 + Retry-After, not accept what cannot be kept or reached."""

from __future__ import annotations

import time
from typing import Any

import fakeredis

from tests.fakes.salesforce import outbound_message
from tests.helpers import SECRET, batch_body, event, signed_headers
from webhooks import create_app
from worker.config import Config
from worker.queues import enqueue_events, make_queue

ORG = "00D000000000001EAA"


class Filling(fakeredis.FakeRedis):
    """fakeredis has no INFO: this one answers the memory section with a settable use."""

    used = 10

    def info(self, section: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"used_memory": self.used, "maxmemory": 100, "maxmemory_policy": "noeviction"}


def app_at(conn: fakeredis.FakeRedis, clock: list[float]) -> Any:
    config = Config.from_env({"PRUNER_WEBHOOK_SECRET": SECRET, "HUBSPOT_CLIENT_SECRET": "s", "SALESFORCE_ORG_ID": ORG})
    return create_app(config, conn, clock=lambda: clock[0]).test_client()


def send(client: Any, clock: list[float]) -> Any:
    body = batch_body([event()])
    return client.post("/webhooks/events", data=body, headers=signed_headers(body, timestamp=int(clock[0])))


def test_a_nearly_full_redis_refuses_every_webhook_with_retry_after() -> None:
    conn = Filling()
    clock = [time.time()]
    client = app_at(conn, clock)
    assert send(client, clock).status_code == 202
    conn.used = 96  # past the default 95 %
    assert send(client, clock).status_code == 202  # the reading is a second old at most: still the old one
    clock[0] += 1.5
    refused = send(client, clock)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "120"
    assert refused.get_json()["error"] == "backpressure" and "96% full" in refused.get_json()["detail"]
    hubspot = client.post("/webhooks/hubspot", data=b"[]", headers={"Content-Type": "application/json"})
    assert hubspot.status_code == 503 and hubspot.headers["Retry-After"] == "120"
    soap = client.post("/webhooks/salesforce", data=outbound_message(ORG, []), content_type="text/xml")
    assert soap.status_code == 503 and b"<faultcode>soapenv:Server</faultcode>" in soap.data
    assert soap.headers["Retry-After"] == "120"
    conn.used = 50
    clock[0] += 1.5
    assert send(client, clock).status_code == 202


def test_a_queue_far_behind_refuses_until_the_workers_catch_up() -> None:
    conn = Filling()
    clock = [time.time()]
    client = app_at(conn, clock)
    enqueue_events(make_queue(conn), [event()], source="events")  # a job nobody takes
    assert send(client, clock).status_code == 202
    clock[0] += 700  # ten minutes later it is still queued
    refused = send(client, clock)
    assert refused.status_code == 503 and "s behind (the limit is 600 s)" in refused.get_json()["detail"]
    make_queue(conn).empty()  # the workers caught up
    clock[0] += 1.5
    assert send(client, clock).status_code == 202
