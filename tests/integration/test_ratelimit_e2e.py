"""The inbound rate limit against real gunicorn: the CRMs' own rates pass, a flood is refused, nothing is lost."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.fakes.salesforce import outbound_message
from tests.helpers import batch_body, event, signed_headers
from tests.integration.support import base_env, serving
from tests.integration.test_hubspot_inbound_e2e import SECRET as HUBSPOT_SECRET
from tests.integration.test_hubspot_inbound_e2e import hs_event, post_signed

pytestmark = pytest.mark.integration
ORG = "00D000000000001EAA"


def web_with(**extra: str) -> Iterator[str]:
    yield from serving(base_env(HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET, SALESFORCE_ORG_ID=ORG, **extra))


@pytest.fixture
def default_web(redis_db: redis.Redis) -> Iterator[str]:
    yield from web_with()


def paced(rate_per_s: float, seconds: float, in_flight: int, call: Callable[[int], int]) -> Counter[int]:
    """Call `call(i)` `rate_per_s` times a second for `seconds`, at most `in_flight` at once; count statuses."""
    total = int(rate_per_s * seconds)
    start = time.monotonic()

    def one(i: int) -> int:
        delay = start + i / rate_per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return call(i)

    with ThreadPoolExecutor(in_flight) as pool:
        return Counter(pool.map(one, range(total)))


def received(url: str, source: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^pruner_events_received_total{{source="{source}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def post_event(url: str) -> int:
    body = batch_body([event(lead_id=f"flood-{uuid.uuid4().hex}")])
    return requests.post(f"{url}/webhooks/events", data=body, headers=signed_headers(body), timeout=10).status_code


def test_the_crms_documented_rates_pass_and_a_flood_is_refused_without_losing_anything(default_web: str) -> None:
    url = default_web
    # HubSpot: `maxConcurrentRequests` per SECONDLY period, 10 by default, raised to 100 by busy
    # portals. At 100 requests a second with 10 in flight, for 3 s, nothing is refused.
    hubspot = paced(100, 3, 10, lambda i: post_signed(url, [hs_event("contact.creation", 7000 + i, i)]).status_code)
    assert hubspot == Counter({204: 300}), hubspot

    # Salesforce: one outbound message per batch of up to 100 notifications, retried with backoff;
    # 20 messages a second, well past what one org's workflow rules send, all acknowledged.
    def salesforce(i: int) -> int:
        note = (f"04l00000000{i:04d}AAA", "Lead", {"Id": f"00Q00000000{i:04d}AAA", "Status": "Working"})
        answer = requests.post(
            f"{url}/webhooks/salesforce",
            data=outbound_message(ORG, [note]),
            headers={"Content-Type": "text/xml"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return answer.status_code

    sf = paced(20, 3, 5, salesforce)
    assert sf == Counter({200: 60}), sf

    # A flood from one sender: 16 clients as fast as they can for about 3 s.
    before = received(url, "events")
    deadline = time.monotonic() + 3

    def hammer(_: int) -> list[int]:
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(post_event(url))
        return statuses

    with ThreadPoolExecutor(16) as pool:
        flood = Counter(status for statuses in pool.map(hammer, range(16)) for status in statuses)
    print(f"flood from one sender: {dict(flood)}")
    assert set(flood) <= {202, 429}, flood  # refused or queued: never a 5xx, never a half-write
    assert flood[429] > 0, flood
    # Per process (memory storage), 2 gunicorn workers: at most 2 × 200 a second got through.
    assert flood[202] <= 2 * 200 * 4, flood
    # Everything acknowledged is queued; nothing refused was.
    assert received(url, "events") - before == flood[202]
    # The limit is per sender and route: HubSpot's deliveries still pass during and after the flood.
    assert post_signed(url, [hs_event("contact.creation", 9999, 99999)]).status_code == 204


@pytest.fixture
def shared_web(redis_db: redis.Redis) -> Iterator[str]:
    yield from web_with(PRUNER_INBOUND_RATE_LIMIT="40/minute", PRUNER_INBOUND_RATE_LIMIT_STORAGE="redis")


def test_counted_in_redis_the_limit_is_exact_across_web_processes(shared_web: str, redis_db: redis.Redis) -> None:
    statuses = Counter(post_event(shared_web) for _ in range(60))  # spread over both gunicorn workers
    assert statuses == Counter({202: 40, 429: 20}), statuses
    refused = requests.post(f"{shared_web}/webhooks/events", data=b"[]", headers=signed_headers(b"[]"), timeout=10)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert any(key.startswith(b"LIMITS:") for key in redis_db.scan_iter(count=1000)), "counted in Redis"
