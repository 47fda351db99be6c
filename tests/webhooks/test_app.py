"""The web app with fakeredis: every bad input gets its status and a sentence, and nothing is queued."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ADMIN_TOKEN, SECRET, batch_body, event, json_values, signed_headers
from webhooks import create_app
from worker.config import Config
from worker.errors import ConfigError
from worker.queues import make_queue


def queued(conn: fakeredis.FakeRedis) -> int:
    return make_queue(conn).count


def post(client: FlaskClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post("/webhooks/events", data=body, headers=signed_headers(body) if headers is None else headers)


def test_signed_batch_is_queued_as_one_json_job(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = batch_body([event(), event(lead_id="lead-2"), event("call_attempted")])
    response = post(client, body)
    assert response.status_code == 202
    assert response.get_json() == {"accepted": 3}
    queue = make_queue(fake_redis)
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.func_name == "worker.jobs.process_batch"
    assert job.args[0] == json.loads(body)
    # The payload in Redis is JSON, not pickle: pickle would run code on load. The body
    # sits in it byte for byte, as it came: validated, not re-encoded.
    raw = fake_redis.hget(f"rq:job:{job.id}", "data")
    assert raw is not None and body in raw
    assert json.loads(raw)[0] == "worker.jobs.process_batch"


def test_a_utf16_body_is_queued_as_decoded_events(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = json.dumps({"events": [event()]}).encode("utf-16")
    assert post(client, body).status_code == 202
    job = make_queue(fake_redis).jobs[0]
    assert job.func_name == "worker.jobs.process_events" and len(job.args[0]) == 1


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([event("email_exploded")], "events[0].type must be one of the canonical types"),
        ([event(), {k: v for k, v in event().items() if k != "lead_id"}], "events[1].lead_id is required"),
        ([event("time_logged", data={"minutes": -5})], "events[0].data.minutes must be an integer > 0"),
        ([event("decision_no")], "events[0].data.reason is required for decision_no"),
        ([{**event(), "occurred_at": "last tuesday"}], "events[0].occurred_at must be an RFC 3339 timestamp"),
        ([{**event(), "crm": "pipedrive"}], "events[0].crm must be one of"),
        ([{**event(), "colour": "red"}], "events[0].colour is not a field of a canonical event"),
        ([], "events must hold at least one event"),
        ([event()] * 1001, "events must hold at most 1000 events, got 1001"),
        ([event(), event(lead_id="L\ud800")], "events[1].lead_id must be valid Unicode text"),
        ([event("decision_no", data={"reason": "\udfff"})], "events[0].data.reason must be valid Unicode text"),
        ([event("deal_updated", data={"amount": 10**400})], "events[0].data.amount must be a non-negative number"),
        ([event("time_logged", data={"minutes": 10**12})], "events[0].data.minutes must be an integer > 0 and at most"),
    ],
    ids=[
        "unknown-type",
        "missing-field",
        "bad-minutes",
        "reason-required",
        "bad-time",
        "bad-crm",
        "extra-key",
        "empty",
        "too-many",
        "lone-surrogate-id",
        "lone-surrogate-text",
        "amount-beyond-float",
        "minutes-absurd",
    ],
)
def test_schema_errors_name_the_field(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis, events: list[Any], field: str
) -> None:
    response = post(client, batch_body(events))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_event"
    assert field in response.get_json()["detail"]
    assert queued(fake_redis) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": [',
        b"[" * 20_000 + b"]" * 20_000,  # nested past the recursion limit: was a 500
        b'{"events": [{"id": "a", "data": ' + b'{"x":' * 5_000 + b"1" + b"}" * 5_000 + b"}]}",
    ],
    ids=["truncated", "deep-arrays", "deep-data"],
)
def test_malformed_json(client: FlaskClient, fake_redis: fakeredis.FakeRedis, body: bytes) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert "not valid JSON" in response.get_json()["detail"]
    assert queued(fake_redis) == 0


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing header"),
        ("tampered", "does not match"),
        ("stale", "s old"),
    ],
)
def test_signature_failures_are_401(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis, headers: Any, detail: str
) -> None:
    body = batch_body([event()])
    if headers == "tampered":
        headers = signed_headers(body)
        body = body.replace(b"email_sent", b"call_attempted")
    elif headers == "stale":
        headers = signed_headers(body, timestamp=int(time.time()) - 600)
    response = post(client, body, headers)
    assert response.status_code == 401
    assert detail in response.get_json()["detail"]
    assert queued(fake_redis) == 0


def test_oversized_body_is_413(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    body = b"x" * (1024 * 1024 + 1)
    response = post(client, body)
    assert response.status_code == 413
    assert "larger than" in response.get_json()["detail"]
    assert queued(fake_redis) == 0


def test_unconfigured_secret_is_503(fake_redis: fakeredis.FakeRedis) -> None:
    client = create_app(Config.from_env({}), fake_redis).test_client()
    response = post(client, batch_body([event()]))
    assert response.status_code == 503
    assert "PRUNER_WEBHOOK_SECRET" in response.get_json()["detail"]


def test_redis_down_is_503_and_ready_fails(config: Config) -> None:
    server = fakeredis.FakeServer()
    server.connected = False  # every command now raises ConnectionError
    dead = fakeredis.FakeRedis(server=server)
    client = create_app(config, dead).test_client()
    response = post(client, batch_body([event()]))
    assert response.status_code == 503
    assert "retry later" in response.get_json()["detail"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_errors_are_json_everywhere(client: FlaskClient) -> None:
    for response in (client.get("/nope"), client.get("/webhooks/events")):
        body = response.get_json()
        assert set(body) == {"error", "detail"}
    assert client.get("/nope").status_code == 404
    assert client.get("/webhooks/events").status_code == 405


def test_leads_route_needs_the_admin_token(client: FlaskClient) -> None:
    assert client.get("/leads/hubspot/x").status_code == 401
    assert client.get("/leads/hubspot/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/leads/hubspot/x", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 404
    assert ok.get_json()["error"] == "unknown_lead"


def test_leads_route_off_without_token(fake_redis: fakeredis.FakeRedis) -> None:
    client = create_app(Config.from_env({"PRUNER_WEBHOOK_SECRET": SECRET}), fake_redis).test_client()
    response = client.get("/leads/hubspot/x", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 503
    assert response.get_json() == {
        "error": "not_configured",
        "detail": "PRUNER_ADMIN_TOKEN is not set, so admin routes are off",
    }


def test_our_one_round_trip_enqueue_writes_the_job_rq_would(fake_redis: fakeredis.FakeRedis) -> None:
    from rq.job import Job

    from worker.queues import JOB_TIMEOUT, PROCESS_EVENTS, RETRY, enqueue_events

    queue = make_queue(fake_redis)
    ours = enqueue_events(queue, [["e1", "email_sent", "hubspot", "L1", 5, {}]], "events")
    theirs = queue.enqueue(
        PROCESS_EVENTS,
        args=([["e1", "email_sent", "hubspot", "L1", 5, {}]],),
        kwargs={"source": "events"},
        result_ttl=0,
        retry=RETRY,
        job_timeout=JOB_TIMEOUT,
    )
    # Every field RQ's own enqueue writes with a value, ours writes too; only the ones RQ
    # writes empty (and reads with a falsy default) are left out. If an RQ upgrade adds
    # a field, this fails before production does.
    our_hash = fake_redis.hgetall(f"rq:job:{ours}")
    rq_hash = fake_redis.hgetall(f"rq:job:{theirs.id}")
    assert set(our_hash) == {field for field, value in rq_hash.items() if value != b""}
    for field in (b"origin", b"timeout", b"result_ttl", b"status", b"retries_left", b"retry_intervals"):
        assert our_hash[field] == rq_hash[field], field
    job = Job.fetch(ours, connection=fake_redis, serializer=queue.serializer)
    rq_job = Job.fetch(theirs.id, connection=fake_redis, serializer=queue.serializer)
    assert (job.func_name, job.args, job.kwargs) == (rq_job.func_name, rq_job.args, rq_job.kwargs)
    assert (job.retries_left, job.retry_intervals, job.timeout, job.result_ttl) == (5, [1, 5, 30, 120, 600], 120, 0)
    for attr in ("origin", "worker_name", "started_at", "ended_at", "last_heartbeat", "group_id", "failure_ttl"):
        assert getattr(job, attr) == getattr(rq_job, attr), attr
    assert (job.get_status(), job.enqueued_at is not None) == (rq_job.get_status(), True)
    assert queue.job_ids == [ours, theirs.id]


def test_a_failed_enqueue_raises_and_leaves_the_client_usable(fake_redis: fakeredis.FakeRedis) -> None:
    import redis

    from worker.queues import enqueue_events

    queue = make_queue(fake_redis)
    fake_redis.set("rq:queues", "not a set")  # SADD inside the transaction fails: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        enqueue_events(queue, [["e1", "email_sent", "hubspot", "L1", 5, {}]], "events")
    fake_redis.delete("rq:queues")
    enqueue_events(queue, [["e2", "email_sent", "hubspot", "L1", 6, {}]], "events")
    assert fake_redis.ping() and fake_redis.smembers("rq:queues") == {queue.key.encode()}


def test_an_enqueue_whose_send_failed_is_sent_once_more(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from worker.queues import enqueue_events

    queue = make_queue(fake_redis)
    conn_class = type(fake_redis.connection_pool.get_connection())
    real_send = conn_class.send_packed_command
    failures: list[int] = []

    def send_once_broken(self: Any, packed: Any, *args: Any, **kwargs: Any) -> None:
        if not failures and b"MULTI" in bytes(packed[0]):
            failures.append(1)
            raise redis.ConnectionError("Connection reset by peer")  # nothing reached Redis
        real_send(self, packed, *args, **kwargs)

    monkeypatch.setattr(conn_class, "send_packed_command", send_once_broken)
    enqueue_events(queue, [["e1", "email_sent", "hubspot", "L1", 5, {}]], "events")
    assert failures == [1] and queue.count == 1


def _mostly(valid: Any) -> st.SearchStrategy[Any]:
    """The valid value three times in four, so that checks deeper in the event are reached too."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), json_values)


_SOME_TYPES = ["email_sent", "time_logged", "deal_updated", "do_not_contact", "lead_profile"]
_DATA_KEYS = ["minutes", "amount", "channels", "reason", "follow_up", "expires_at", "meeting_id", "email"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.fixed_dictionaries(
        {
            "id": _mostly("e-1"),
            "type": st.one_of(st.sampled_from(_SOME_TYPES), json_values),
            "crm": _mostly("hubspot"),
            "lead_id": _mostly("L-1"),
            "occurred_at": _mostly("2026-11-20T10:00:00Z"),
        },
        optional={"data": st.dictionaries(st.sampled_from(_DATA_KEYS), json_values, max_size=2) | json_values},
    )
)
def test_any_signed_json_gets_202_or_400_never_500(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis, fields: dict[str, Any]
) -> None:
    fake_redis.flushdb()
    body = json.dumps({"events": [fields]}).encode()
    response = post(client, body)
    assert response.status_code in (202, 400), (response.status_code, response.get_json())
    assert queued(fake_redis) == (1 if response.status_code == 202 else 0)


def test_a_rotated_secret_overlaps_the_old_one_at_the_route(fake_redis: fakeredis.FakeRedis) -> None:
    new = "whsec_" + base64.b64encode(b"the-new-secret-rotated-in-32byte").decode()
    config = Config.from_env({"PRUNER_WEBHOOK_SECRET": f"{new} {SECRET}"})
    client = create_app(config, fake_redis).test_client()
    body = batch_body([event()])
    for signer in (SECRET, new):
        assert client.post("/webhooks/events", data=body, headers=signed_headers(body, signer)).status_code == 202
    with pytest.raises(ConfigError, match="secret 2 of PRUNER_WEBHOOK_SECRET"):
        Config.from_env({"PRUNER_WEBHOOK_SECRET": f"{new} whsec_not-base64!"})


def test_a_wrong_method_is_405_with_allow_and_the_json_error_shape(client: FlaskClient) -> None:
    # Found by the HTTP fuzzer: the JSON error handler used to drop werkzeug's `Allow` header.
    response = client.get("/webhooks/events")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"].split(", ")
    assert response.get_json() == {"error": "method_not_allowed", "detail": "this route does not accept that method"}
