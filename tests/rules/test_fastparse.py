"""The msgspec fast path never accepts what the authoritative validator refuses, and agrees on values."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.errors import SchemaError
from rules.events import parse_batch
from rules.fastparse import _fast, _fast_count, _Slow, fast_count, parse_body, parse_decoded

NOW = 1_795_219_200_000  # 2026-11-21T00:00Z: the stamps below are in the past, but for 2099
stamps = st.sampled_from([
    "2026-11-20T10:00:00Z", "2026-11-20t10:00:00z", "2026-11-20 10:00:00Z", "2026-11-20T10:00:00.123456789Z",
    "2026-11-20T10:00:00.5+05:30", "2026-11-20T10:00:00-00:00", "2026-11-20T10:00:00", "2026-11-20",
    "2026-02-30T10:00:00Z", "2026-11-20T24:00:00Z", "2026-11-20T10:00Z", "2026-11-20T10:00:00+05",
    "2099-01-01T00:00:00Z", "20261120T100000Z", "2026-11-20T10:00:60Z", "2026-11-20T10:00:00.999Z",
])  # fmt: skip
texts = st.one_of(st.sampled_from(["a", " ", "", "x" * 256, "x" * 257, "\t", "lead 1", "é"]), st.text(max_size=5))
data = st.one_of(
    st.just({}),
    st.just(None),
    st.just({"follow_up": True}),
    st.just({"follow_up": 1}),
    st.just({"minutes": 5}),
    st.just({"minutes": 0}),
    st.just({"minutes": True}),
    st.just({"reason": "budget"}),
    st.just({"reason": " "}),
    st.just({"channels": ["email", "email"]}),
    st.just({"channels": []}),
    st.just({"amount": float("inf")}),
    st.just({"amount": -1}),
    st.just({"expires_at": "2026-12-01T00:00:00Z"}),
    st.just({"bogus": 1}),
    st.just([]),
)
types = st.sampled_from(
    [
        "email_sent",
        "time_logged",
        "decision_no",
        "do_not_contact",
        "deal_updated",
        "proposal_sent",
        "not_a_type",
        "EMAIL_SENT",
    ]
)
events = st.fixed_dictionaries(
    {
        "id": texts,
        "type": types,
        "crm": st.sampled_from(["hubspot", "salesforce", "pipedrive"]),
        "lead_id": texts,
        "occurred_at": stamps,
    },
    optional={"data": data, "extra": st.just(1)},
)


def slow(body: bytes) -> Any:
    try:
        return parse_batch(json.loads(body), NOW)
    except SchemaError as exc:
        return f"error: {exc}"


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(events, min_size=0, max_size=4))
def test_fast_path_is_never_looser(batch: list[dict[str, Any]]) -> None:
    body = json.dumps({"events": batch}).encode()
    expected = slow(body)
    try:
        counted = _fast_count(body, NOW)
    except _Slow:
        pass  # the authoritative validator decides
    else:
        assert not isinstance(expected, str), expected
        assert counted == len(expected)
    try:
        got: Any = _fast(body, NOW)
    except _Slow:
        return  # the authoritative validator decides, so parse_body == slow by construction
    assert got == expected


# Valid events with awkward text: quotes, backslashes, control characters, non-ASCII.
ids = st.text(min_size=1, max_size=12).filter(lambda t: not t.isspace())
valid_events = st.builds(
    lambda id_, lead, typed, crm, stamp: {
        "id": id_, "type": typed[0], "crm": crm, "lead_id": lead, "occurred_at": stamp, **typed[1]
    },
    ids, ids,
    st.sampled_from([
        ("email_sent", {}), ("email_sent", {"data": {"follow_up": True}}), ("time_logged", {"data": {"minutes": 5}}),
        ("decision_no", {"data": {"reason": 'said "no" \\ twice'}}), ("do_not_contact", {"data": None}),
        ("deal_updated", {"data": {"amount": 1.5e3, "stage": "é"}}),
    ]),
    st.sampled_from(["hubspot", "salesforce"]),
    st.sampled_from(["2026-11-20T10:00:00Z", "2026-11-20T10:00:00.5+05:30", "2026-11-20T10:00:00.999Z"]),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(st.one_of(valid_events, events), min_size=1, max_size=4),
    indent=st.sampled_from([None, 2]),
    ascii_only=st.booleans(),
)
def test_a_batch_the_fast_path_accepts_splices_into_a_job_as_itself(
    batch: list[dict[str, Any]], indent: int | None, ascii_only: bool
) -> None:
    # The web queues an accepted body byte for byte inside the job's JSON, and the worker
    # parses what RQ decodes from it: both must give exactly the events the body holds.
    from fakeredis import FakeRedis
    from rq.job import Job

    from worker.queues import enqueue_batch, make_queue

    body = json.dumps({"events": batch}, indent=indent, ensure_ascii=ascii_only).encode()
    if fast_count(body, NOW) is None:
        return  # not queued as it came (see test_a_utf16_body_is_queued_as_decoded_events)
    queue = make_queue(FakeRedis())
    job = Job.fetch(enqueue_batch(queue, body, len(batch), "events"), queue.connection, queue.serializer)
    assert list(job.args) == [json.loads(body)] and job.kwargs == {"source": "events"}
    assert parse_decoded(job.args[0], NOW) == parse_body(body, NOW) == slow(body)


def test_parse_decoded_reports_like_parse_batch() -> None:
    bad = {"events": [{"id": "e", "type": "email_sent", "crm": "hubspot", "lead_id": " ", "occurred_at": "x"}]}
    try:
        parse_decoded(bad, NOW)
    except SchemaError as exc:
        assert str(exc).startswith("events[0].lead_id")
    else:
        raise AssertionError("accepted a blank lead id")


def test_parse_body_reports_like_parse_batch() -> None:
    body = json.dumps(
        {
            "events": [
                {"id": "e", "type": "nope", "crm": "hubspot", "lead_id": "L", "occurred_at": "2026-11-20T10:00:00Z"}
            ]
        }
    ).encode()
    try:
        parse_body(body, NOW)
    except SchemaError as exc:
        assert str(exc) == "events[0].type must be one of the canonical types, got 'nope'"
    else:
        raise AssertionError("accepted an unknown type")
