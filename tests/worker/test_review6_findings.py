"""Second reader's findings on 7b43055 (a list-index entry's profile from the evaluation's counters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from rules.events import Event, format_ms, parse_event
from tests.helpers import event
from worker import leadindex
from worker.decide import Decider
from worker.leadindex import Entry
from worker.policyfile import default_policy
from worker.reindex import reindex
from worker.store import LeadStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEY = b"k" * 32
POLICY = default_policy()  # retention horizon 180 days


def ms(days: float) -> int:
    return int((T0 + timedelta(days=days)).timestamp() * 1000)


def ev(etype: str, lead: str, days: float, version: tuple[str, float] | None = None, **data: Any) -> Event:
    raw = event(etype, lead_id=lead, at=T0 + timedelta(days=days), data=data or None)
    if version is not None:
        raw["version"] = {"record": version[0], "modified_at": format_ms(ms(version[1]))}
    return parse_event(raw, "e", ms(days) + 1)


def decide(days: float) -> Decider:
    return Decider(POLICY, ms(days), suppression_key=KEY)


def entry(s: LeadStore, lead: str) -> Entry | None:
    raw = s.redis.hget(leadindex.ENTRIES_KEY, leadindex.member("hubspot", lead))
    return Entry.decode(raw) if raw is not None else None


def fold_a_deal(s: LeadStore) -> None:
    """Lead "a": a versioned deal and a loss, then 200 days on an email: the first 20 days folded."""
    s.apply_batch(
        [
            ev("lead_profile", "a", 0, source="webinar"),
            ev("deal_updated", "a", 0, version=("deal-9", 0), deal_id="9", stage="appointmentscheduled"),
            ev("not_interested", "a", 1),
            ev("not_interested", "a", 2),
        ],
        decide(10),
    )
    assert entry(s, "a") is not None and entry(s, "a").deal_stage == "appointmentscheduled"  # type: ignore[union-attr]
    s.apply_batch([ev("email_sent", "a", 199)], decide(200))
    log = s.log("hubspot", "a")
    assert log is not None and log.fold is not None and log.fold.events == 4


def test_a_new_version_of_a_folded_record_gives_an_entry_that_reindex_changes(conn: redis.Redis) -> None:
    """The live entry now takes the replay's counters, which ignore a new version of a record the
    log's fold counted (rules/lifecycle.py `evaluate`, `start_from.records`); the rebuild
    (worker/reindex.py) and a merge (worker/identity.py) folded the kept events onto the fold's
    counters (leadindex.fold), which applies that version, until c1a0abe gave them the replay's
    counting too. Before 7b43055 the live path folded the same way as the rebuild."""
    s = LeadStore(conn, KEY)
    fold_a_deal(s)
    # The deal record's next version, 200 days on: a new stage.
    s.apply_batch(
        [ev("deal_updated", "a", 200.5, version=("deal-9", 200.5), deal_id="9", stage="contractsent")], decide(201)
    )
    live = entry(s, "a")
    reindex(conn)
    rebuilt = entry(s, "a")
    assert live == rebuilt, (live, rebuilt)


def test_after_a_merge_an_unrelated_profile_event_moves_the_deal_stage(conn: redis.Redis) -> None:
    """The same divergence through a merge (worker/identity.py folds the entry's profile like the
    rebuild): the merged record brings the folded deal's next version, the survivor's entry shows
    its stage, and the next profile event that says nothing of deals puts the old stage back."""
    s = LeadStore(conn, KEY)
    fold_a_deal(s)
    s.apply_batch(
        [ev("deal_updated", "b", 200.5, version=("deal-9", 200.5), deal_id="9", stage="contractsent")], decide(201)
    )
    s.merge("hubspot", "a", ["b"], decide(201))
    merged = entry(s, "a")
    assert merged is not None
    s.apply_batch([ev("lead_profile", "a", 201, priority="high")], decide(202))
    after = entry(s, "a")
    assert after is not None and after.priority == "high"
    assert after.deal_stage == merged.deal_stage, (merged, after)
