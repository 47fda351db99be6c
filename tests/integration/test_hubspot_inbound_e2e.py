"""HubSpot webhooks over real HTTP, signed by HubSpot's own client library (an independent oracle)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import requests
from hubspot.utils.signature import Signature

from tests.integration.support import base_env, drained, get_lead, start_web, start_worker, stop, wait_http, wait_until

pytestmark = pytest.mark.integration
SECRET = "hs-integration-client-secret"


@pytest.fixture
def hubspot_web(redis_db: redis.Redis) -> Iterator[str]:
    env = base_env(HUBSPOT_CLIENT_SECRET=SECRET)
    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        yield url
    finally:
        stop(web)
        stop(worker)


def hs_event(kind: str, object_id: int, event_id: int, **extra: object) -> dict[str, object]:
    return {
        "eventId": event_id,
        "subscriptionId": 777,
        "portalId": 62515,
        "appId": 1,
        "occurredAt": int(time.time() * 1000) - 60_000,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
        **extra,
    }


def post_signed(url: str, events: list[dict[str, object]], version: str = "v3") -> requests.Response:
    body = json.dumps(events)
    uri = f"{url}/webhooks/hubspot"
    ts = str(int(time.time() * 1000))
    signature = Signature.get_signature(SECRET, body, version, uri, "POST", ts)
    headers = {"Content-Type": "application/json"}
    if version == "v3":
        headers |= {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ts}
    else:
        headers |= {"X-HubSpot-Signature": signature, "X-HubSpot-Signature-Version": version}
    return requests.post(uri, data=body.encode(), headers=headers, timeout=10)


def test_signed_by_hubspots_client_and_processed(hubspot_web: str, redis_db: redis.Redis) -> None:
    opt_out = hs_event("contact.propertyChange", 9001, 1, propertyName="hs_email_optout", propertyValue="true")
    response = post_signed(hubspot_web, [opt_out, hs_event("ticket.creation", 5, 2)])
    assert response.status_code == 204, response.text
    assert post_signed(hubspot_web, [opt_out], version="v1").status_code == 204  # redelivered, v1-signed
    wait_until(drained(redis_db))
    doc = get_lead(hubspot_web, "9001").json()
    assert doc["state"] == "SUPPRESSED" and doc["events"] == 1  # the redelivery was not counted again
    scraped = requests.get(f"{hubspot_web}/metrics", timeout=10).text
    assert 'pruner_events_ignored_total{kind="ticket.creation",source="hubspot"}' in scraped


def test_tampered_or_stale_is_401_and_nothing_queued(hubspot_web: str, redis_db: redis.Redis) -> None:
    body = json.dumps([hs_event("contact.privacyDeletion", 9002, 3)])
    uri = f"{hubspot_web}/webhooks/hubspot"
    stale = str(int(time.time() * 1000) - 600_000)
    headers = {
        "X-HubSpot-Signature-v3": Signature.get_signature(SECRET, body, "v3", uri, "POST", stale),
        "X-HubSpot-Request-Timestamp": stale,
        "Content-Type": "application/json",
    }
    response = requests.post(uri, data=body.encode(), headers=headers, timeout=10)
    assert response.status_code == 401 and "s old" in response.json()["detail"]
    now = str(int(time.time() * 1000))
    headers |= {
        "X-HubSpot-Signature-v3": Signature.get_signature(SECRET, body, "v3", uri, "POST", now),
        "X-HubSpot-Request-Timestamp": now,
    }
    response = requests.post(uri, data=body.replace("9002", "9003").encode(), headers=headers, timeout=10)
    assert response.status_code == 401 and "does not match" in response.json()["detail"]
    assert not list(redis_db.scan_iter("rq:job:*"))
