"""Second reader's findings on the 12-byte log records (review-5): each test fails on 93f7296.

Severity in each test's docstring.
"""

from __future__ import annotations

import json

import fakeredis

from rules.events import Crm, Event, EventType
from rules.hubspot_map import HubSpotBatch, HubSpotMapping, contact_change, property_change_id
from tests.worker.test_checkpoint import P, history_of
from worker import eventlog
from worker.decide import Decider
from worker.keys import lead_key
from worker.store import LeadStore


def test_a_backfilled_hubspot_email_with_an_unpaired_surrogate_does_not_fail_its_whole_batch() -> None:
    """LOW. msgpack cannot encode an unpaired surrogate, and JSON could.

    A HubSpot backfill maps contact property history read through the REST API
    (rules/hubspot_history.py -> rules/hubspot_map.contact_change). That path never runs
    `rules.events._check_text`, which rejects unpaired surrogates on the webhook paths.
    `requests`' .json() turns a "\\ud83d" escape (an emoji cut in half) into a lone surrogate.
    The job carries it through `Event.from_wire`, again unchecked. Up to b21f783 the log
    stored `data` as `json.dumps` (escaped ASCII), so with no PRUNER_SUPPRESSION_KEY (the
    one other place an email is encoded) the batch went through. On 93f7296
    `eventlog.pack_data` treats every str as msgpack-packable, so `msgspec.msgpack.encode`
    raises UnicodeEncodeError. The whole job fails on every retry, taking the other leads'
    events with it (here M's opt-out). `_packable` should send such a string to the
    0xc1 + JSON fallback, as it does for other values msgpack cannot hold the way JSON does.
    """
    events = history_of(3)
    now = events[-1].occurred_ms
    # What `requests` gives for {"value": "jane\ud83d@example.com"} in a property history.
    value = json.loads('"jane\\ud83d@example.com"')
    batch = HubSpotBatch()
    contact_change(
        batch, "L", "email", value, now, now, HubSpotMapping(), property_change_id("contact", "L", "email", now)
    )
    [profile] = batch.events
    # Through the RQ job as the backfill sink queues it (to_wire, JSON, from_wire: never validated).
    profile = Event.from_wire(json.loads(json.dumps(profile.to_wire())))
    optout = Event("optout-1", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "M", now, {"channels": ["email"]})
    conn = fakeredis.FakeRedis()
    result = LeadStore(conn).apply_batch([*events, profile, optout], Decider(P, now))
    assert result.added == len(events) + 2
    assert len(eventlog.decode(conn.get(lead_key("hubspot", "M")))) == 1


def test_a_checkpoint_without_a_log_or_with_an_empty_one_gets_a_log_with_its_version_byte() -> None:
    """LOW, from before 93f7296 (the reviewer's note): a lead with a checkpoint but no log (a
    log deleted by hand, or an empty value) had its live events appended without the version
    byte, a log no reader could decode."""
    for damaged in (None, b""):
        conn = fakeredis.FakeRedis()
        store = LeadStore(conn)
        events = history_of(4)
        store.apply_batch(events[:2], Decider(P, events[1].occurred_ms))
        if damaged is None:
            conn.delete(lead_key("hubspot", "L"))
        else:
            conn.set(lead_key("hubspot", "L"), damaged)
        result = store.apply_batch(events[2:3], Decider(P, events[2].occurred_ms))
        assert result.added == 1
        blob = conn.get(lead_key("hubspot", "L"))
        assert blob[:1] == eventlog.VERSION
        assert [e.key for e in eventlog.decode(blob)] == [eventlog.to_logged(events[2]).key]
    # The same on the path that reads the log (a late event), for an empty value.
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    store.apply_batch(events[1:3], Decider(P, events[2].occurred_ms))
    conn.set(lead_key("hubspot", "L"), b"")
    assert store.apply_batch(events[:1], Decider(P, events[2].occurred_ms)).added == 1
    blob = conn.get(lead_key("hubspot", "L"))
    assert blob[:1] == eventlog.VERSION and len(eventlog.decode(blob)) == 1


def test_unchecked_crm_text_with_an_unpaired_surrogate_is_mended_not_fatal_to_the_batch() -> None:
    """LOW, from before 93f7296 (the reviewer's note): the same input in `source` (and segment,
    priority, stage, reason) failed the batch in the list index, and with a suppression key an
    email failed its keyed hash. Such text now reaches the store as U+FFFD (rules.events.mend_text)."""
    events = history_of(3)
    now = events[-1].occurred_ms
    broken = json.loads('"Web\\ud83d"')
    profile = Event("p1", EventType.LEAD_PROFILE, Crm.HUBSPOT, "L", now, {"source": broken, "email": "a\udfff@b.c"})
    optout = Event("optout-1", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "M", now, {"channels": ["email"]})
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn, b"k" * 32)
    result = store.apply_batch([*events, profile, optout], Decider(P, now, suppression_key=b"k" * 32))
    assert result.added == len(events) + 2
    [kept] = [e for e in eventlog.decode(conn.get(lead_key("hubspot", "L"))) if e.type is EventType.LEAD_PROFILE]
    assert kept.data == {"source": "Web\ufffd", "email": "a\ufffd@b.c"}
    # And the lead can be erased (its emails hashed) afterwards.
    erase = Event("erase-1", EventType.ERASURE_REQUESTED, Crm.HUBSPOT, "L", now + 1, {})
    assert store.apply_batch([erase], Decider(P, now + 1, suppression_key=b"k" * 32)).erased
