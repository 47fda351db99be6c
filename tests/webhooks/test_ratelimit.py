"""Per-sender rate limit on the webhook routes: a flood is refused with 429 + Retry-After, others pass."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from tests.fakes.salesforce import outbound_message
from tests.helpers import SECRET, batch_body, event, signed_headers
from webhooks import create_app
from webhooks.ratelimit import client_address, parse_limit
from worker.config import Config
from worker.errors import ConfigError

ORG = "00D000000000001EAA"


def client_for(limit: str, **extra: str) -> Any:
    env = {"PRUNER_WEBHOOK_SECRET": SECRET, "HUBSPOT_CLIENT_SECRET": "s", "SALESFORCE_ORG_ID": ORG}
    config = Config.from_env({**env, "PRUNER_INBOUND_RATE_LIMIT": limit, **extra})
    return create_app(config, fakeredis.FakeRedis()).test_client()


def send(client: Any, address: str = "203.0.113.7", **headers: str) -> Any:
    body = batch_body([event()])
    return client.post(
        "/webhooks/events",
        data=body,
        headers={**signed_headers(body, timestamp=int(time.time())), **headers},
        environ_base={"REMOTE_ADDR": address},
    )


def test_a_flooding_sender_is_refused_with_429_and_others_still_pass() -> None:
    # Per hour, so no window edge falls inside the test however slow the machine.
    client = client_for("5/hour")
    assert [send(client).status_code for _ in range(5)] == [202] * 5
    refused = send(client)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"] == "rate_limited"
    assert "more than 5 requests per hour from this sender to /webhooks/events" in body["detail"]
    assert "203.0.113.7" not in refused.get_data(as_text=True)  # an address is personal data
    assert 3500 < int(refused.headers["Retry-After"]) <= 3600
    assert send(client, address="198.51.100.9").status_code == 202  # another sender is not affected


def test_each_route_has_its_own_count_and_every_route_answers_in_its_own_format() -> None:
    client = client_for("1/hour")
    assert send(client).status_code == 202
    assert send(client).status_code == 429
    hubspot = client.post("/webhooks/hubspot", data=b"[]", headers={"Content-Type": "application/json"})
    assert hubspot.status_code == 401  # its first request: past the limit, refused by the signature check
    hubspot = client.post("/webhooks/hubspot", data=b"[]", headers={"Content-Type": "application/json"})
    assert hubspot.status_code == 429 and hubspot.get_json()["error"] == "rate_limited"
    assert (
        client.post("/webhooks/salesforce", data=outbound_message(ORG, []), content_type="text/xml").status_code == 200
    )
    soap = client.post("/webhooks/salesforce", data=outbound_message(ORG, []), content_type="text/xml")
    assert soap.status_code == 429 and b"<faultcode>soapenv:Server</faultcode>" in soap.data
    assert b"more than 1 requests per hour" in soap.data and soap.headers["Retry-After"]


def test_unsigned_requests_count_too_so_a_flood_never_reaches_the_signature_check() -> None:
    client = client_for("3/hour")
    bad = {"webhook-signature": "v1,AAAA"}
    assert [send(client, **bad).status_code for _ in range(3)] == [401] * 3
    assert send(client).status_code == 429


def test_behind_a_trusted_proxy_the_address_the_proxy_appended_is_the_sender() -> None:
    client = client_for("2/hour", PRUNER_TRUST_PROXY="1")
    # The proxy's address is the same for everyone; the right-most forwarded entry is the sender.
    for sender in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert send(client, address="10.0.0.1", **{"X-Forwarded-For": f"6.6.6.6, {sender}"}).status_code == 202
    # A client that writes its own X-Forwarded-For cannot dodge the limit: only the last entry counts.
    assert send(client, address="10.0.0.1", **{"X-Forwarded-For": "1.1.1.1, 192.0.2.1"}).status_code == 202
    assert send(client, address="10.0.0.1", **{"X-Forwarded-For": "2.2.2.2, 192.0.2.1"}).status_code == 429


def test_without_a_trusted_proxy_forwarded_headers_are_ignored() -> None:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    environ = EnvironBuilder(headers={"X-Forwarded-For": "1.2.3.4"}, environ_base={"REMOTE_ADDR": "5.6.7.8"})
    req = Request(environ.get_environ())
    assert client_address(req, trust_proxy=False) == "5.6.7.8"
    assert client_address(req, trust_proxy=True) == "1.2.3.4"


def test_off_turns_the_limit_off() -> None:
    client = client_for("off")
    assert all(send(client).status_code == 202 for _ in range(300))


@pytest.mark.parametrize("bad", ["lots", "200/fortnight", "-1/second"])
def test_a_bad_limit_stops_the_deploy_with_a_sentence(bad: str) -> None:
    with pytest.raises(ConfigError, match="PRUNER_INBOUND_RATE_LIMIT must look like 200/second"):
        Config.from_env({"PRUNER_INBOUND_RATE_LIMIT": bad})
    with pytest.raises(ConfigError, match="PRUNER_INBOUND_RATE_LIMIT_STORAGE must be memory or redis"):
        Config.from_env({"PRUNER_INBOUND_RATE_LIMIT_STORAGE": "memcached"})


def test_the_default_is_200_a_second_and_parses() -> None:
    config = Config.from_env({})
    assert config.inbound_rate_limit == "200/second" and config.inbound_rate_limit_storage == "memory://"
    assert [str(item) for item in parse_limit(config.inbound_rate_limit)] == ["200 per 1 second"]
