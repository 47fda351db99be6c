"""Our Standard Webhooks verifier against the official package as an oracle."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from tests.helpers import SECRET, signed_headers
from webhooks.errors import SignatureError
from webhooks.signatures import verify
from worker.secrets import decode_secret, decode_secrets

NOW = 1_790_000_000
KEY = decode_secret(SECRET)
BODY = b'{"events": []}'


def official_headers(body: bytes = BODY, ts: int = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    sig = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_accepts_what_the_official_library_signs() -> None:
    assert verify(BODY, official_headers(), KEY, NOW) == "msg_1"


def test_official_library_accepts_what_we_sign() -> None:
    now = int(time.time())
    headers = signed_headers(BODY, SECRET, timestamp=now, msg_id="msg_9")
    Webhook(SECRET).verify(BODY, headers)  # raises if our understanding diverged
    assert verify(BODY, headers, KEY, now) == "msg_9"


def test_accepts_any_matching_signature_in_a_list() -> None:
    headers = official_headers()
    headers["webhook-signature"] = "v1,bm90LWl0 " + headers["webhook-signature"]
    assert verify(BODY, headers, KEY, NOW) == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "does not match"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW - 301)}, b), "301 s old"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 301)}, b), "in the future"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header"),
        (lambda h, b: ({**h, "webhook-timestamp": "yesterday"}, b), "integer seconds"),
        (lambda h, b: ({**h, "webhook-signature": "garbage"}, b), "does not match"),
        (lambda h, b: ({**h, "webhook-signature": "v1,é"}, b), "does not match"),
    ],
    ids=["tampered-body", "tampered-id", "stale", "future", "unsigned", "bad-timestamp", "garbage", "non-ascii"],
)
def test_rejects_with_a_sentence(mutate, message) -> None:  # type: ignore[no-untyped-def]
    headers, body = mutate(official_headers(), BODY)
    with pytest.raises(SignatureError, match=message):
        verify(body, headers, KEY, NOW)


def test_window_edges_are_inclusive() -> None:
    verify(BODY, official_headers(ts=NOW - 300), KEY, NOW)
    verify(BODY, official_headers(ts=NOW + 300), KEY, NOW)


def test_wrong_secret_fails() -> None:
    other = decode_secret("whsec_" + base64.b64encode(b"another-secret-of-enough-bytes!!").decode())
    with pytest.raises(SignatureError):
        verify(BODY, official_headers(), other, NOW)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_c2hvcnQ="])
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        decode_secret(secret)


NEW_SECRET = "whsec_" + base64.b64encode(b"the-new-secret-rotated-in-32byte").decode()


def test_during_a_rotation_either_secret_signs_and_the_old_one_is_refused_once_removed() -> None:
    both = decode_secrets(f"{SECRET} {NEW_SECRET}")
    assert verify(BODY, official_headers(), both, NOW) == "msg_1"  # the sender still on the old secret
    new = Webhook(NEW_SECRET).sign("msg_2", datetime.fromtimestamp(NOW, tz=UTC), BODY.decode())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(NOW), "webhook-signature": new}
    assert verify(BODY, headers, both, NOW) == "msg_2"  # and already on the new one
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, official_headers(), decode_secrets(NEW_SECRET), NOW)  # the overlap is over


def test_a_secret_without_base64_padding_is_accepted_as_the_reference_library_does() -> None:
    unpadded = "whsec_" + base64.b64encode(b"31-byte-secret-with-no-padding!").decode().rstrip("=")
    assert not unpadded.endswith("=")
    sig = Webhook(unpadded).sign("msg_3", datetime.fromtimestamp(NOW, tz=UTC), BODY.decode())
    headers = {"webhook-id": "msg_3", "webhook-timestamp": str(NOW), "webhook-signature": sig}
    assert verify(BODY, headers, decode_secret(unpadded), NOW) == "msg_3"


def test_header_names_are_case_insensitive_in_any_mapping() -> None:
    headers = {k.title(): v for k, v in official_headers().items()}  # "Webhook-Id", as some proxies send
    assert verify(BODY, headers, KEY, NOW) == "msg_1"
