"""Second reader's findings on the 15-byte log records (review-4): each test failed on c9019fb.

A time past 48 bits is now kept in full (a flag and 8 more bytes), the redelivery probe skips an
empty log value, and tests/helpers.plain unpacks the folds of both log formats.
"""

from __future__ import annotations

import fakeredis

from rules.events import Crm, Event, EventType
from rules.hubspot_map import engagement_events
from tests.helpers import plain
from tests.worker.test_checkpoint import P, history_of
from worker import compression, eventlog
from worker.decide import Decider
from worker.keys import lead_key
from worker.store import LeadStore

# A HubSpot meeting whose hs_timestamp is 9999-12-31 (a typo'd year, an API client's "never"):
# `engagement_versions` takes hs_timestamp as it is, with no "24 hours ahead" bound.
FAR_MS = 253_402_214_400_000


def test_a_hubspot_engagement_dated_after_year_6429_does_not_fail_its_batch() -> None:
    events = history_of(3)
    now = events[-1].occurred_ms
    record = {"id": "9001", "properties": {"hs_timestamp": "9999-12-31T00:00:00Z", "hs_meeting_outcome": "SCHEDULED"}}
    fetched = engagement_events("meetings", record, ["L"], now)
    assert fetched[0].occurred_ms == FAR_MS
    optout = Event("optout-1", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "other", now, {"channels": ["email"]})
    store = LeadStore(fakeredis.FakeRedis())
    # Before c9019fb the batch was stored (a 64-bit time); now eventlog.encode raises StoreError
    # and the whole job fails, the other lead's opt-out with it, on every retry.
    result = store.apply_batch([*events, *fetched, optout], Decider(P, now))
    assert result.added == len(events) + 2


def test_a_log_of_the_previous_format_holding_a_far_future_event_can_still_be_decided() -> None:
    # A store upgraded in place: the previous version stored such an event in a 19-byte record.
    events = history_of(4)
    far = Event("hs:meetings:9001:L", EventType.MEETING_BOOKED, Crm.HUBSPOT, "L", FAR_MS, {"meeting_id": "9001"})
    conn = fakeredis.FakeRedis()
    old = [eventlog.to_logged(e) for e in (*events[:2], far)]
    conn.set(lead_key("hubspot", "L"), b"\x01" + eventlog.encode(old, eventlog.RECORDS_19))
    store = LeadStore(conn)
    # The checkpoint's tail (and any fold rewrite) packs the event in the new records: StoreError,
    # for every batch and sweep that touches the lead from now on.
    result = store.apply_batch(events[2:3], Decider(P, events[2].occurred_ms))
    assert result.added == 1


def test_plain_shows_the_emails_of_a_folded_log_of_the_previous_format() -> None:
    # tests/helpers.plain unpacks the fold of a version-4 log only: a GDPR byte scan over a store
    # holding version-2 logs (an upgraded store) would not see the emails their compressed folds keep.
    emails = ["jane.doe@example.com", "jane.doe@example.org", "john.doe@example.com"]
    import msgspec

    fold = eventlog.Fold(1_000, msgspec.Raw(msgspec.msgpack.encode([1, 2, 3])), 3, emails)
    kept = [eventlog.LoggedEvent(2_000, EventType.EMAIL_SENT, b"k" * 6, {})]
    packed = compression.pack(eventlog.fold_bytes(fold))
    old = b"\x02" + len(packed).to_bytes(4, "little") + packed + eventlog.encode(kept, eventlog.RECORDS_19)
    assert eventlog.read(old).fold.emails == emails
    assert not all(e.encode() in old for e in emails)  # compressed: not all visible as they are
    assert all(e.encode() in plain(old) for e in emails)


def test_an_empty_log_value_does_not_fail_the_redelivery_probe_for_the_whole_batch() -> None:
    # `string.byte("", 1)` is nil in Lua, and `nil <= 2` an error: one lead whose log key holds
    # an empty string fails the probe, so every lead of the batch (here "M") with it.
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events, others = history_of(4), history_of(4, lead="M")
    store.apply_batch([*events[:2], *others[:2]], Decider(P, events[1].occurred_ms))
    conn.set(lead_key("hubspot", "L"), b"")
    store.apply_batch([events[2], others[2]], Decider(P, others[2].occurred_ms))
    assert len(eventlog.decode(conn.get(lead_key("hubspot", "M")))) == 3
