"""HubSpot signatures: the vectors of docs/crm.md, and hubspot-api-client as an oracle."""

from __future__ import annotations

import pytest
from hubspot.utils.signature import Signature

from webhooks.errors import SignatureError
from webhooks.hubspot_signatures import normalize_uri, sign_v1, sign_v2, sign_v3, verify

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
URI = "https://www.example.com/webhook_uri"
EXAMPLE = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM",'
    b'"changeFlag":"NEW","appId":54321}]'
)
TS = 1693657560000


def test_vectors() -> None:
    assert sign_v1(SECRET, EXAMPLE) == "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
    assert sign_v2(SECRET, "GET", URI, b"") == "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
    body = b'{"example_field":"example_value"}'
    assert sign_v2(SECRET, "POST", URI, body) == "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
    v3_body = b"{'example_field':'example_value'}"
    assert sign_v3(SECRET, "POST", URI, v3_body, str(TS)) == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_official_client_agrees(version: str) -> None:
    body = EXAMPLE.decode()
    expected = Signature.get_signature(SECRET, body, version, URI, "POST", str(TS))
    headers = (
        {"X-HubSpot-Signature-v3": expected, "X-HubSpot-Request-Timestamp": str(TS)}
        if version == "v3"
        else {"X-HubSpot-Signature": expected, "X-HubSpot-Signature-Version": version}
    )
    assert verify(EXAMPLE, headers, SECRET, "POST", URI, TS + 1000) == version


def v3_headers(body: bytes, ts: int = TS, uri: str = URI) -> dict[str, str]:
    return {
        "X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", uri, body, str(ts)),
        "X-HubSpot-Request-Timestamp": str(ts),
    }


@pytest.mark.parametrize(
    ("headers", "body", "now", "message"),
    [
        (v3_headers(EXAMPLE), EXAMPLE + b" ", TS, "does not match"),
        (v3_headers(EXAMPLE), EXAMPLE, TS + 301_000, "s old"),
        (v3_headers(EXAMPLE), EXAMPLE, TS - 301_000, "in the future"),
        ({}, EXAMPLE, TS, "missing X-HubSpot-Signature-v3"),
        ({"X-HubSpot-Signature-v3": "x", "X-HubSpot-Request-Timestamp": "soon"}, EXAMPLE, TS, "epoch milliseconds"),
        ({"X-HubSpot-Signature-Version": "v1"}, EXAMPLE, TS, "missing X-HubSpot-Signature header"),
        ({"X-HubSpot-Signature": "ab", "X-HubSpot-Signature-Version": "v9"}, EXAMPLE, TS, "must be v1, v2 or v3"),
        (
            {"X-HubSpot-Signature": sign_v1("wrong", EXAMPLE), "X-HubSpot-Signature-Version": "v1"},
            EXAMPLE,
            TS,
            "does not match",
        ),
    ],
    ids=["tampered", "stale", "future", "unsigned", "bad-timestamp", "v1-missing", "bad-version", "wrong-secret"],
)
def test_refusals_say_why(headers: dict[str, str], body: bytes, now: int, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(body, headers, SECRET, "POST", URI, now)


def test_uri_escapes_are_decoded_like_hubspot() -> None:
    raw = "https://example.com/webhooks/hubspot?next=%2Fa%3Ab%40c&x=%20"
    assert normalize_uri(raw) == "https://example.com/webhooks/hubspot?next=/a:b@c&x=%20"
    signed_as = normalize_uri(raw)
    headers = {
        "X-HubSpot-Signature-v3": sign_v3(SECRET, "POST", signed_as, b"[]", str(TS)),
        "X-HubSpot-Request-Timestamp": str(TS),
    }
    assert verify(b"[]", headers, SECRET, "POST", raw, TS) == "v3"


def test_v1_and_v2_can_be_refused_since_they_carry_no_timestamp() -> None:
    # A captured delivery stripped of its v3 headers, replayed as v1 a week later.
    v1 = {"X-HubSpot-Signature": sign_v1(SECRET, EXAMPLE), "X-HubSpot-Signature-Version": "v1"}
    week_later = TS + 7 * 86_400_000
    assert verify(EXAMPLE, v1, SECRET, "POST", URI, week_later) == "v1"  # the default accepts all three
    with pytest.raises(SignatureError, match="v1 signatures are not accepted here"):
        verify(EXAMPLE, v1, SECRET, "POST", URI, week_later, frozenset({"v3"}))
    # The same request as HubSpot sent it, v3 headers included, still passes within its window.
    both = {**v1, **v3_headers(EXAMPLE)}
    assert verify(EXAMPLE, both, SECRET, "POST", URI, TS + 1000, frozenset({"v3"})) == "v3"


@pytest.mark.parametrize("value", ["v1", "v1,v2", "v4,v3", ","])
def test_signature_versions_must_include_v3(value: str) -> None:
    from worker.config import Config
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="HUBSPOT_SIGNATURE_VERSIONS"):
        Config.from_env({"HUBSPOT_SIGNATURE_VERSIONS": value})
    assert Config.from_env({"HUBSPOT_SIGNATURE_VERSIONS": " V3 "}).hubspot_signature_versions == {"v3"}


def test_the_previous_client_secret_still_verifies_while_the_app_is_rotated() -> None:
    previous, current = SECRET, "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
    now = TS + 1000
    for signer in (previous, current):
        headers = {
            "x-hubspot-signature-v3": sign_v3(signer, "POST", URI, EXAMPLE, str(TS)),  # lower case: any mapping
            "X-HUBSPOT-REQUEST-TIMESTAMP": str(TS),
        }
        assert verify(EXAMPLE, headers, [current, previous], "POST", URI, now) == "v3"
    with pytest.raises(SignatureError, match="does not match"):
        old = {
            "X-HubSpot-Signature-v3": sign_v3(previous, "POST", URI, EXAMPLE, str(TS)),
            "X-HubSpot-Request-Timestamp": str(TS),
        }
        verify(EXAMPLE, old, [current], "POST", URI, now)
