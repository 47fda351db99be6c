"""Stored records compressed with the frozen dictionary: round trips, older records, damage."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import fakeredis
import msgspec
import pytest

from rules.events import Crm, Event, EventType
from tests.rules_helpers import at
from worker import compression, staterecord
from worker.checkpoint import unpack
from worker.decide import Decider
from worker.errors import StoreError
from worker.keys import checkpoint_key, state_key
from worker.policyfile import default_policy
from worker.store import LeadStore

# The dictionary records were packed with: never retrained in place (a record packed with it
# would no longer read); a new dictionary ships under a new number.
V1_SHA256 = "e88f6cbf3d5e5a4929127184102235cd6b430297b9cd5477f2a6d43ed5ade500"


def test_the_shipped_dictionary_is_the_frozen_one() -> None:
    raw = resources.files("worker").joinpath("zdict/v1.bin").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == V1_SHA256


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"{}",
        json.dumps({"state": "LOST", "loss_reason": "no_response", "acted": ["unresponsive:BREAKUP_DUE@1#1"]}).encode(),
        msgspec.msgpack.encode([1, "abc", 2**62, None, {"count": 3}]),
        bytes(range(256)) * 8,
    ],
)
def test_a_packed_record_reads_back_byte_for_byte(record: bytes) -> None:
    packed = compression.pack(record)
    assert packed[0] == compression.MARK and packed[1] == compression.CURRENT
    assert compression.unpack(packed) == record


def test_a_record_written_before_compression_reads_as_it_is() -> None:
    plain = json.dumps({"state": "ACTIVE", "decisions": []}).encode()
    assert compression.unpack(plain) == plain
    assert staterecord.decode(plain) == {"state": "ACTIVE", "decisions": []}
    assert compression.unpack(b"\x99\x01") == b"\x99\x01"  # a msgpack checkpoint's first bytes


def test_a_record_naming_an_unknown_dictionary_is_refused_with_a_sentence() -> None:
    packed = bytearray(compression.pack(b'{"state":"LOST"}'))
    packed[1] = 250
    with pytest.raises(StoreError, match="dictionary 250"):
        compression.unpack(bytes(packed))


def test_a_damaged_record_is_refused_not_misread() -> None:
    packed = compression.pack(b'{"state":"LOST","loss_reason":"no_response"}' * 4)
    with pytest.raises(StoreError, match="damaged"):
        compression.unpack(packed[:-3])


def test_the_store_writes_state_and_checkpoint_packed_and_reads_them() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = [Event(f"n{i}", EventType.NOT_INTERESTED, Crm.HUBSPOT, "L", at(1, hours=i), {}) for i in range(2)]
    store.apply_batch(events, Decider(default_policy(), at(2)))
    crm, lead = "hubspot", "L"
    raw_state, raw_ck = conn.get(state_key(crm, lead)), conn.get(checkpoint_key(crm, lead))
    assert compression.is_packed(raw_state) and compression.is_packed(raw_ck)
    assert (store.state(crm, lead) or {})["state"] == "LOST"
    assert unpack(raw_ck) is not None


def test_a_damaged_checkpoint_costs_a_replay_not_the_batch() -> None:
    conn = fakeredis.FakeRedis()
    store = LeadStore(conn)
    events = [Event(f"d{i}", EventType.NOT_INTERESTED, Crm.HUBSPOT, "D", at(1, hours=i), {}) for i in range(2)]
    store.apply_batch(events[:1], Decider(default_policy(), at(2)))
    key = checkpoint_key("hubspot", "D")
    conn.set(key, (conn.get(key) or b"")[:-4])  # torn
    assert unpack(conn.get(key)) is None
    result = store.apply_batch(events[1:], Decider(default_policy(), at(2)))
    assert result.paths == {"replay": 1}
    assert (store.state("hubspot", "D") or {})["state"] == "LOST"
    assert unpack(conn.get(key)) is not None  # written anew
