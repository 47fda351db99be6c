"""Upgrading a store whose list index an earlier version wrote (issue #13; worker/reindex.py).

The earlier index had a set for every lead, per outcome and per rule, and JSON entries under
"{crm}:{lead_id}". The first worker to start deletes it (once: nothing reads it any more) and
indexes every lead anew; the lists then answer as before.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis

from rules.events import Event, parse_event
from tests.helpers import event
from worker import leadindex, leadquery, reindex
from worker.decide import Decider
from worker.leadindex import Entry
from worker.leadquery import Filters
from worker.policyfile import default_policy
from worker.store import LeadStore

T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
NOW_MS = int((T0 + timedelta(days=20)).timestamp() * 1000)
KEY = b"k" * 32


def ev(etype: str, lead: str, days: float, **data: Any) -> Event:
    return parse_event(event(etype, lead_id=lead, at=T0 + timedelta(days=days), data=data or None), "e", NOW_MS)


def decide() -> Decider:
    return Decider(default_policy(), NOW_MS, suppression_key=KEY)


def a_store() -> LeadStore:
    s = LeadStore(fakeredis.FakeRedis(), KEY)
    batch = [ev("lead_profile", "a", 0, source="webinar"), ev("not_interested", "a", 1), ev("not_interested", "a", 2)]
    batch += [ev("not_interested", "b", 2), ev("not_interested", "b", 3), ev("email_replied", "b", 4)]
    batch += [ev("decision_no", "c", 5, reason="We went with a competitor"), ev("email_sent", "d", 1)]
    batch += [ev("email_sent", "w", 1), ev("deal_updated", "w", 2, stage="closedwon")]
    s.apply_batch(batch, decide())
    reindex.ensure_index(s.redis)
    return s


QUERIES = [
    Filters(),
    Filters(outcome="lost"),
    Filters(outcome="won"),
    Filters(rule="repeated_no"),
    Filters(state="ACTIVE"),
]


def answers(conn: redis.Redis) -> dict[str, Any]:
    pages = {str(f): [(r.crm, r.lead_id, r.entry) for r in leadquery.page(conn, f, 50).rows] for f in QUERIES}
    counts = {d: leadquery.counts(conn, d) for d in ("outcome", "state", "reason", "rule")}
    return {
        "pages": pages,
        "counts": counts,
        "complete": leadindex.is_complete(conn),
        "tracked": leadindex.tracked(conn),
    }


def as_the_earlier_version_wrote_it(conn: redis.Redis) -> None:
    """Replace the index with the one the version before wrote for the same leads."""
    entries = {leadindex.lead_of(k): Entry.decode(v) for k, v in conn.hgetall(leadindex.ENTRIES_KEY).items()}
    for key in list(conn.scan_iter(f"{leadindex.PREFIX}*")):
        conn.delete(key)
    for (crm, lead_id), e in entries.items():
        name = f"{crm}:{lead_id}"
        blob = [e.state, e.loss_reason, list(e.rules), e.source, e.deal_stage, e.changed_ms, e.segment, e.priority]
        conn.hset("pruner:leads:entries", name, json.dumps(blob, separators=(",", ":")))
        conn.zadd("pruner:leads:by:all", {name: e.changed_ms})
        for dim, values in e.values(crm).items():
            if dim in ("state", "reason", "rule", "source", "outcome"):
                for value in values:
                    conn.zadd(f"pruner:leads:by:{dim}:{value}", {name: e.changed_ms})
        if e.loss_reason:
            conn.sadd("pruner:leads:values:reason", e.loss_reason)
        if e.rules:
            conn.sadd("pruner:leads:values:rule", *e.rules)
    conn.set("pruner:leads:indexed", str(len(entries)))


def legacy_keys(conn: redis.Redis) -> list[str]:
    keys = [k.decode() for k in conn.scan_iter("pruner:leads:*")]
    return sorted(k for k in keys if not k.startswith(leadindex.PREFIX) and k != leadindex.TRACKED_KEY)


def test_the_earlier_index_is_deleted_once_and_the_lists_answer_as_before() -> None:
    s = a_store()
    before = answers(s.redis)
    assert before["pages"][str(Filters())] and before["counts"]["outcome"] == {"open": 1, "won": 1, "lost": 2}
    as_the_earlier_version_wrote_it(s.redis)
    assert "pruner:leads:by:all" in legacy_keys(s.redis) and "pruner:leads:by:outcome:lost" in legacy_keys(s.redis)
    # Until the first worker starts, the lists say they are incomplete; nothing reads the old sets.
    assert not leadindex.is_complete(s.redis) and leadquery.page(s.redis, Filters(), 50).rows == []
    assert reindex.ensure_index(s.redis) == 5
    assert legacy_keys(s.redis) == [] and answers(s.redis) == before
    assert reindex.ensure_index(s.redis) is None  # once


def test_batches_applied_before_the_first_worker_starts_are_kept_by_the_rebuild() -> None:
    s = a_store()
    as_the_earlier_version_wrote_it(s.redis)
    # A worker of this version applies a batch before another one rebuilt the index.
    s.apply_batch([ev("email_replied", "a", 6), ev("not_interested", "d", 6), ev("not_interested", "d", 7)], decide())
    s.forget("hubspot", "c")
    assert reindex.ensure_index(s.redis) == 4
    assert legacy_keys(s.redis) == []
    rows = leadquery.page(s.redis, Filters(), 50).rows
    assert [(r.lead_id, r.entry.state) for r in rows] == [("d", "LOST"), ("a", "ACTIVE"), ("b", "ACTIVE"), ("w", "WON")]


def test_after_a_rollback_the_next_upgrade_drops_what_the_earlier_version_left_stale() -> None:
    s = a_store()
    # Rolled back: the version before found no index of its own and wrote one; meanwhile it
    # erased "c", whose entry in this version's index stays behind (stale).
    stale = s.redis.hget(leadindex.ENTRIES_KEY, leadindex.member("hubspot", "c"))
    as_the_earlier_version_wrote_it(s.redis)
    s.redis.hset(leadindex.ENTRIES_KEY, leadindex.member("hubspot", "c"), stale)  # type: ignore[arg-type]
    s.redis.zadd(leadindex.by_key("state", "LOST"), {leadindex.member("hubspot", "c"): 1})
    s.redis.set(leadindex.INDEXED_KEY, "5")
    s.forget("hubspot", "c")
    assert reindex.ensure_index(s.redis) == 4
    assert legacy_keys(s.redis) == [] and leadindex.is_complete(s.redis)
    assert s.redis.hget(leadindex.ENTRIES_KEY, leadindex.member("hubspot", "c")) is None
    assert [r.lead_id for r in leadquery.page(s.redis, Filters(outcome="lost"), 50).rows] == ["a"]


def test_one_process_rebuilds_at_a_time() -> None:
    s = a_store()
    as_the_earlier_version_wrote_it(s.redis)
    s.redis.set(reindex.REINDEX_LOCK, "1")  # another worker is at it
    assert reindex.ensure_index(s.redis) is None and legacy_keys(s.redis) != []
    s.redis.delete(reindex.REINDEX_LOCK)
    assert reindex.ensure_index(s.redis) == 5 and s.redis.get(reindex.REINDEX_LOCK) is None
    assert reindex.ensure_index(s.redis, force=True) == 5  # `pruner leads --backfill`
    assert legacy_keys(s.redis) == []


def test_a_batch_committed_while_the_rebuild_indexes_its_lead_leaves_no_stale_membership(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review (issue #13): ensure_index rebuilds the index at every upgrade while the other
    # workers "start at once". A worker that read a lead's entry (None: dropped) before the
    # rebuild indexed it, and commits after, moves it from None: the rebuild's set is never
    # left. Neither transaction touches a key the other watches, so both commit.
    s = a_store()
    reindex.drop_index(s.redis)  # what ensure_index does first on an upgraded store
    original = leadindex.read
    rebuilt: list[int] = []
    started: list[bool] = []

    def read_then_rebuild(connection: Any, leads: Any) -> Any:
        out = original(connection, leads)
        if not started:  # the first worker's rebuild runs between this worker's read and its EXEC
            started.append(True)
            rebuilt.append(reindex.reindex(s.redis))
        return out

    monkeypatch.setattr(leadindex, "read", read_then_rebuild)
    s.apply_batch([ev("email_replied", "a", 6)], decide())  # "a": LOST -> ACTIVE
    monkeypatch.setattr(leadindex, "read", original)
    assert rebuilt == [5]
    assert leadquery.counts(s.redis, "state").get("LOST", 0) == 1  # "c" alone
    rows = [r.lead_id for r in leadquery.page(s.redis, Filters(), 50).rows]
    assert sorted(rows) == ["a", "b", "c", "w"]  # each lead once


def test_a_rebuild_puts_back_a_set_deleted_under_an_entry_that_survived() -> None:
    # A batch committed while the old index was being deleted can leave a lead's entry in place
    # with one of its sets gone; the rebuild then finds the entry unchanged and must still write
    # the lead's sets, or the lead drops out of its lists for good.
    s = a_store()
    before = answers(s.redis)
    s.redis.delete(leadindex.by_key("state", "LOST"))
    assert answers(s.redis) != before
    reindex.reindex(s.redis)
    assert answers(s.redis) == before
