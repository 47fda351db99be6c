"""The lead list index (worker/leadindex.py): kept in step with the store, paged, erased with the lead."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from rules.events import Event, format_ms, parse_event
from tests.helpers import ADMIN_TOKEN, SECRET, event
from webhooks import create_app
from worker import leadindex, leadquery
from worker import store as worker_store
from worker.config import Config
from worker.decide import Decider
from worker.leadindex import Entry
from worker.leadquery import Filters, QueryError, parse_query
from worker.policyfile import default_policy
from worker.store import LeadStore

T0 = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
NOW_MS = int((T0 + timedelta(days=20)).timestamp() * 1000)
KEY = b"k" * 32
POLICY = default_policy()


def ev(etype: str, lead: str, days: float, **data: Any) -> Event:
    raw = event(etype, lead_id=lead, at=T0 + timedelta(days=days), data=data or None)
    return parse_event(raw, "e", NOW_MS)


def store() -> LeadStore:
    return LeadStore(fakeredis.FakeRedis(), KEY)


def decide() -> Decider:
    return Decider(POLICY, NOW_MS, suppression_key=KEY)


def said_no(lead: str, days: float, source: str = "webinar") -> list[Event]:
    return [
        ev("lead_profile", lead, 0, source=source, email=f"{lead}@example.org"),
        ev("not_interested", lead, days - 1),
        ev("not_interested", lead, days),
    ]


def ids(page: leadquery.Page) -> list[str]:
    return [row.lead_id for row in page.rows]


def everything(s: LeadStore, filters: Filters, limit: int) -> list[str]:
    """Follow the cursor to the end, checking no page is longer than asked."""
    out: list[str] = []
    cursor = None
    for _ in range(100):
        page = leadquery.page(s.redis, filters, limit, cursor)
        assert len(page.rows) <= limit
        out += ids(page)
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


def test_lists_by_state_reason_rule_and_source_newest_decision_first() -> None:
    s = store()
    batch = said_no("a", 2) + said_no("b", 4, source="referral") + said_no("c", 3)
    batch += [ev("decision_no", "d", 5, reason="We went with a competitor"), ev("email_sent", "e", 1)]
    s.apply_batch(batch, decide())
    lost = leadquery.page(s.redis, Filters(state="LOST"), 10)
    # By the decision's own time (event time), not the order they were processed in.
    assert ids(lost) == ["d", "b", "c", "a"] and lost.next_cursor is None
    assert lost.rows[0].public() == {
        "crm": "hubspot",
        "lead_id": "d",
        "state": "LOST",
        "loss_reason": "competitor",
        "changed_at": format_ms(int((T0 + timedelta(days=5)).timestamp() * 1000)),
        "rules": ["decisive_no"],
    }
    assert ids(leadquery.page(s.redis, Filters(reason="not_interested"), 10)) == ["b", "c", "a"]
    assert ids(leadquery.page(s.redis, Filters(rule="repeated_no", source="webinar"), 10)) == ["c", "a"]
    # "e" is only being worked: counted, not listed (no rule decided on it).
    assert ids(leadquery.page(s.redis, Filters(state="ACTIVE"), 10)) == []
    assert leadindex.tracked(s.redis) == 5
    assert ids(leadquery.page(s.redis, Filters(crm="salesforce"), 10)) == []
    since = int((T0 + timedelta(days=3)).timestamp() * 1000)
    assert ids(leadquery.page(s.redis, Filters(state="LOST", since_ms=since), 10)) == ["d", "b", "c"]
    day = 86_400_000
    assert ids(leadquery.page(s.redis, Filters(state="LOST", since_ms=since, until_ms=since + day - 1), 10)) == ["c"]
    assert ids(leadquery.page(s.redis, Filters(state="LOST", since_ms=since, until_ms=since + day), 10)) == ["b", "c"]
    assert leadquery.counts(s.redis, "reason") == {"competitor": 1, "not_interested": 3}
    assert leadquery.counts(s.redis, "state", since_ms=since) == {"LOST": 3}


def test_pages_end_to_end_without_gaps_or_repeats_even_when_changes_tie() -> None:
    s = store()
    # 23 leads lost at the very same millisecond, 10 at others: ties must not be skipped or repeated.
    batch = [e for n in range(23) for e in said_no(f"t{n:02d}", 3)]
    batch += [e for n in range(10) for e in said_no(f"u{n}", 4 + n / 10)]
    s.apply_batch(batch, decide())
    for limit in (1, 4, 7, 33, 50):
        listed = everything(s, Filters(state="LOST"), limit)
        assert len(listed) == 33 and len(set(listed)) == 33, limit
        assert listed[:10] == [f"u{n}" for n in range(9, -1, -1)]
    listed = everything(s, Filters(state="LOST", source="webinar", rule="repeated_no"), 3)
    assert len(listed) == 33 and len(set(listed)) == 33


def test_a_change_moves_the_lead_between_lists_and_an_erasure_takes_it_off_every_list() -> None:
    s = store()
    s.apply_batch(said_no("a", 2) + said_no("b", 3), decide())
    s.apply_batch([ev("email_replied", "a", 6)], decide())
    assert ids(leadquery.page(s.redis, Filters(state="LOST"), 10)) == ["b"]
    assert ids(leadquery.page(s.redis, Filters(state="ACTIVE"), 10)) == ["a"]
    # A's reason is gone with its loss; the rule that once decided still finds it.
    assert ids(leadquery.page(s.redis, Filters(reason="not_interested"), 10)) == ["b"]
    assert ids(leadquery.page(s.redis, Filters(rule="repeated_no"), 10)) == ["a", "b"]
    b = leadindex.member("hubspot", "b")
    assert s.redis.hget(leadindex.ENTRIES_KEY, b) is not None  # the name the checks below look for
    s.apply_batch([ev("erasure_requested", "b", 7)], decide())
    members = [key for key in s.redis.scan_iter(f"{leadindex.BY_PREFIX}*") if s.redis.zscore(key, b) is not None]
    assert members == [] and s.redis.hget(leadindex.ENTRIES_KEY, b) is None
    assert ids(leadquery.page(s.redis, Filters(), 10)) == ["a"]


def test_merge_forget_and_erasure_take_the_gone_records_off_the_lists_and_the_count() -> None:
    s = store()
    s.apply_batch(said_no("a", 2) + said_no("b", 3) + said_no("c", 4) + [ev("email_sent", "d", 1)], decide())
    assert leadindex.tracked(s.redis) == 4
    s.merge("hubspot", "a", ["b"], decide())
    assert ids(leadquery.page(s.redis, Filters(), 10)) == ["c", "a"] and leadindex.tracked(s.redis) == 3
    s.forget("hubspot", "c")
    assert ids(leadquery.page(s.redis, Filters(), 10)) == ["a"] and leadindex.tracked(s.redis) == 2
    assert s.redis.zcard(leadindex.by_key("state", "LOST")) == 1
    s.apply_batch([ev("erasure_requested", "a", 8), ev("erasure_requested", "d", 8)], decide())
    assert ids(leadquery.page(s.redis, Filters(), 10)) == [] and leadindex.tracked(s.redis) == 0
    assert s.redis.zcard(leadindex.by_key("state", "LOST")) == 0


def test_a_won_lead_is_listed_as_won_and_as_open_once_its_deal_reopens() -> None:
    s = store()
    s.apply_batch([ev("email_sent", "w", 1), ev("deal_updated", "w", 2, stage="closedwon")], decide())
    assert ids(leadquery.page(s.redis, Filters(outcome="won"), 10)) == ["w"]
    assert ids(leadquery.page(s.redis, Filters(state="WON"), 10)) == ["w"]
    s.apply_batch([ev("deal_updated", "w", 3, stage="contractsent")], decide())  # reopened in the CRM
    assert ids(leadquery.page(s.redis, Filters(outcome="won"), 10)) == []
    assert ids(leadquery.page(s.redis, Filters(state="ACTIVE", outcome="open"), 10)) == ["w"]


def test_an_unchanged_lead_writes_nothing_to_the_index() -> None:
    s = store()
    s.apply_batch(said_no("a", 2), decide())
    a, lost = leadindex.member("hubspot", "a"), leadindex.by_key("state", "LOST")
    before = s.redis.hget(leadindex.ENTRIES_KEY, a)
    assert before is not None and s.redis.zscore(lost, a) is not None
    s.redis.delete(lost)  # a write would put it back
    s.apply_batch([ev("email_sent", "a", 5)], decide())
    assert s.redis.hget(leadindex.ENTRIES_KEY, a) == before and s.redis.zcard(lost) == 0


def test_a_live_batch_lists_a_lead_and_moves_its_profile_without_reading_its_log(monkeypatch: Any) -> None:
    """The entry's profile is the evaluation's (`Outcome.profile`): until 2026-12-06 the store read
    the lead's log, one GET each, to fold it again for every lead listed for the first time and for
    every profile event of a listed lead."""
    s = store()
    s.apply_batch([ev("lead_profile", "a", 0, source="webinar"), ev("email_sent", "a", 1)], decide())
    assert s.redis.hget(leadindex.ENTRIES_KEY, leadindex.member("hubspot", "a")) is None  # not decided yet
    reads: list[bytes | None] = []
    real = worker_store.eventlog.read
    monkeypatch.setattr(worker_store.eventlog, "read", lambda blob: reads.append(blob) or real(blob))
    s.apply_batch([ev("not_interested", "a", 2), ev("not_interested", "a", 3)], decide())  # decided: listed
    s.apply_batch([ev("lead_profile", "a", 4, source="referral", segment="smb")], decide())
    s.apply_batch([ev("deal_updated", "a", 5, stage="contractsent")], decide())
    assert reads == []
    entry = Entry.decode(s.redis.hget(leadindex.ENTRIES_KEY, leadindex.member("hubspot", "a")) or b"")
    assert (entry.state, entry.source, entry.segment, entry.deal_stage) == ("LOST", "referral", "smb", "contractsent")
    consistent(s)


def test_a_store_from_before_the_index_lists_after_the_backfill() -> None:
    s = store()
    s.apply_batch(said_no("a", 2) + [ev("email_sent", "b", 1), ev("deal_updated", "b", 2, stage="closedwon")], decide())
    for key in [*s.redis.scan_iter("pruner:leads:*")]:
        s.redis.delete(key)
    assert ids(leadquery.page(s.redis, Filters(), 10)) == [] and not leadindex.is_complete(s.redis)
    assert s.reindex(batch=1) == 2
    assert leadindex.is_complete(s.redis)
    assert sorted(ids(leadquery.page(s.redis, Filters(), 10))) == ["a", "b"]  # both changed at day 2
    assert ids(leadquery.page(s.redis, Filters(outcome="won"), 10)) == ["b"]
    assert s.reindex() == 2  # again: nothing changes
    assert leadquery.counts(s.redis, "outcome") == {"lost": 1, "won": 1}


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"state": "lost"}, "state", "state must be one of ACTIVE"),
        ({"crm": "pipedrive"}, "crm", "crm must be one of hubspot, salesforce"),
        ({"since": "yesterday"}, "since", "RFC 3339"),
        ({"limit": "0"}, "limit", "from 1 to 500"),
        ({"limit": "1e3"}, "limit", "whole number"),
        ({"cursor": "bm9wZQ"}, "cursor", "next_cursor"),
        ({"stat": "LOST"}, "stat", "unknown parameter 'stat'"),
        ({"source": "x" * 201}, "source", "longer than 200"),
    ],
)
def test_a_bad_parameter_is_named_in_a_sentence(params: dict[str, str], parameter: str, words: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_query(params)
    assert caught.value.parameter == parameter and words in str(caught.value)


def test_a_good_query_reads_every_parameter() -> None:
    params = {"state": "LOST", "reason": "no_response", "since": "2026-11-01T00:00:00Z", "limit": "5", "crm": ""}
    q = parse_query(params)
    assert q.limit == 5 and q.cursor is None
    assert q.filters == Filters(state="LOST", reason="no_response", since_ms=1_793_491_200_000)


# --- GET /leads and /dashboard/leads -------------------------------------------------------

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def listing_app(s: LeadStore) -> FlaskClient:
    config = Config.from_env({"PRUNER_WEBHOOK_SECRET": SECRET, "PRUNER_ADMIN_TOKEN": ADMIN_TOKEN})
    return create_app(config, s.redis, clock=lambda: NOW_MS / 1000).test_client()


def test_get_leads_pages_with_an_opaque_cursor_and_shows_ids_only() -> None:
    s = store()
    s.apply_batch([e for n in range(5) for e in said_no(f"p{n}", 2 + n)] + [ev("email_sent", "q", 1)], decide())
    client = listing_app(s)
    assert client.get("/leads").status_code == 401
    first = client.get("/leads?state=LOST&limit=3", headers=AUTH)
    assert first.status_code == 200
    body = first.get_json()
    assert [lead["lead_id"] for lead in body["leads"]] == ["p4", "p3", "p2"] and body["next_cursor"]
    assert set(body["leads"][0]) == {"crm", "lead_id", "state", "loss_reason", "changed_at", "rules"}
    assert "example.org" not in first.get_data(as_text=True)  # the profile's email is never listed
    second = client.get(f"/leads?state=LOST&limit=3&cursor={body['next_cursor']}", headers=AUTH).get_json()
    assert [lead["lead_id"] for lead in second["leads"]] == ["p1", "p0"] and second["next_cursor"] is None
    everyone = [lead["lead_id"] for lead in client.get("/leads", headers=AUTH).get_json()["leads"]]
    assert everyone == ["p4", "p3", "p2", "p1", "p0"]  # "q", never decided on, is not listed


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("state=lost", "state"),
        ("since=last+week", "since"),
        ("limit=9999", "limit"),
        ("cursor=abc", "cursor"),
        ("colour=red", "colour"),
        ("state=LOST&state=ACTIVE", "state"),
    ],
)
def test_get_leads_answers_400_naming_the_bad_parameter(query: str, named: str) -> None:
    response = listing_app(store()).get(f"/leads?{query}", headers=AUTH)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "bad_parameter" and named in body["detail"] and body["detail"][0].isalpha()


def test_the_browser_list_page_shows_words_and_a_next_page_link() -> None:
    s = store()
    s.apply_batch([e for n in range(3) for e in said_no(f"w{n}", 2 + n)], decide())
    client = listing_app(s)
    # Without a session: the login form, which comes back to the same list.
    login = client.get("/dashboard/leads?reason=not_interested", headers={"Accept": "text/html"})
    assert login.status_code == 401 and "/dashboard/leads?reason=not_interested" in login.get_data(as_text=True)
    page = client.get("/dashboard/leads?reason=not_interested&limit=2", headers=AUTH)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert 'data-lead="w2"' in text and 'data-lead="w1"' in text and 'data-lead="w0"' not in text
    assert ">Not interested<" in text and ">Said no repeatedly<" in text and 'title="not_interested"' in text
    more = re.search(r'href="(/dashboard/leads\?[^"]+)" rel="next"', text)
    assert more is not None
    rest = client.get(more.group(1).replace("&amp;", "&"), headers=AUTH).get_data(as_text=True)
    assert 'data-lead="w0"' in rest and 'rel="next"' not in rest
    bad = client.get("/dashboard/leads?state=nope", headers=AUTH)
    assert bad.status_code == 400 and "state must be one of" in bad.get_data(as_text=True)


def consistent(s: LeadStore) -> None:
    """The index agrees with the store: counts, entries and every sorted set."""
    logs = {k.decode()[len("pruner:lead:") :] for k in s.redis.scan_iter("pruner:lead:*")}
    assert leadindex.tracked(s.redis) == len(logs)
    entries = {
        ":".join(leadindex.lead_of(k)): Entry.decode(v) for k, v in s.redis.hgetall(leadindex.ENTRIES_KEY).items()
    }
    assert set(entries) <= logs
    for name in logs:
        crm, _, lead_id = name.partition(":")
        expected = leadindex.entry_for(s.state(crm, lead_id), s.history(crm, lead_id) or [], None, [])
        if expected is None:  # only the profile fold is skipped with no new events: recompute it
            history = s.history(crm, lead_id) or []
            expected = leadindex.entry_for(s.state(crm, lead_id), history, None, history)
        assert entries.get(name) == expected, name
    members: dict[str, set[str]] = {}
    for key in s.redis.scan_iter(f"{leadindex.BY_PREFIX}*"):
        for member, score in s.redis.zrange(key, 0, -1, withscores=True):
            name = ":".join(leadindex.lead_of(member))
            assert score == entries[name].changed_ms, (name, key)
            members.setdefault(name, set()).add(key.decode())
    for name, keys in members.items():
        entry = entries[name]
        # Its state, its combination of rules, its loss reason and its source: no other set.
        want = {leadindex.by_key("state", entry.state)}
        want |= {leadindex.by_key("rules", ",".join(sorted(entry.rules)))} if entry.rules else set()
        want |= {leadindex.by_key("reason", entry.loss_reason)} if entry.loss_reason else set()
        want |= {leadindex.by_key("source", entry.source)} if entry.source else set()
        assert keys == want, name
    assert set(members) == set(entries)


def test_the_index_stays_consistent_through_random_stories() -> None:
    rng = random.Random(16)
    s = store()
    leads = [f"r{n}" for n in range(5)]
    seen: set[str] = set()
    day = 0.0
    for _ in range(200):
        day += rng.random() / 12  # 200 steps: about eight days, all before NOW_MS
        lead = rng.choice(leads)
        kind = rng.randrange(9)
        if kind < 3:
            s.apply_batch([ev(rng.choice(["not_interested", "email_sent", "email_replied"]), lead, day)], decide())
        elif kind == 3:
            s.apply_batch([ev("deal_updated", lead, day, stage=rng.choice(["closedwon", "contractsent"]))], decide())
        elif kind == 4:
            s.apply_batch([ev("lead_profile", lead, day, source=rng.choice(["webinar", "referral"]))], decide())
        elif kind == 5:
            s.apply_batch([ev("decision_no", lead, day, reason="went with a competitor")], decide())
        elif kind == 6:
            # The mappers never name the survivor among the merged (rules/hubspot_map.py).
            s.merge("hubspot", lead, [rng.choice([other for other in leads if other != lead])], decide())
        elif kind == 7:
            s.forget("hubspot", lead)
        else:
            s.apply_batch([ev("erasure_requested", lead, day)], decide())
            # An erased id is dropped for good: the story goes on with a new lead.
            leads[leads.index(lead)] = f"r{len(leads) + rng.randrange(10**6)}"
        consistent(s)
        seen |= {e.decode() for e in s.redis.hkeys(leadindex.ENTRIES_KEY)}
    assert len(seen) >= 8  # the story listed (and unlisted) leads, not just counted them
