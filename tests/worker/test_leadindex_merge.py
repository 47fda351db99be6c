"""Pages and counts the list index derives by merging sets (worker/leadindex.py).

Every lead, an outcome and a rule have no sorted set of their own: a page merges the state
sets, or the sets of the rule combinations, newest first. These tests compare every page,
followed by cursor, and every count with the same question answered by brute force over
the entries, on stories full of leads changed at the very same millisecond in different
sets (where a wrong merge or a wrong cursor skips or repeats a lead). They run on fakeredis
and on the real Redis, whose order for equal scores the merge must reproduce.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from worker import leadindex, leadquery
from worker.leadindex import Entry, Lead
from worker.leadquery import Filters

STATES = leadindex.FIXED_VALUES["state"]
RULES = ("unresponsive", "breakup_grace", "reply_resets", "repeated_no", "pushed_back")
T0 = 1_790_000_000_000
DAY = 86_400_000


@pytest.fixture(params=["fakeredis", "redis"])
def db(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis()
    else:
        yield request.getfixturevalue("conn")  # DB 12 of the test Redis (tests/worker/conftest.py)


def random_entry(rng: random.Random, changed: int) -> Entry:
    state = rng.choice(STATES)
    reason = rng.choice([None, "no_response", "competitor"]) if state != "ACTIVE" else None
    rules = tuple(sorted(rng.sample(RULES, rng.choice([0, 1, 1, 2, 2, 3]))))
    source = rng.choice([None, "webinar", "referral"])
    return Entry(state, reason, rules, source, rng.choice([None, "contractsent"]), changed, rng.choice([None, "smb"]))


def story(db: redis.Redis, seed: int, leads: int = 120) -> dict[Lead, Entry]:
    """Index `leads` leads, most of them changed at one of a few instants (ties across every set),
    then move a third of them (new state, rules, time) and unlist a few, as batches do."""
    rng = random.Random(seed)
    instants = [T0 + k * DAY for k in range(4)] + [T0 + DAY + 1, T0 + 2 * DAY - 1]
    index: dict[Lead, Entry] = {}
    with db.pipeline(transaction=False) as pipe:
        for n in range(leads):
            lead = (rng.choice(["hubspot", "salesforce"]), f"{rng.choice('abc')}{n:03d}")
            changed = rng.choice(instants) if rng.random() < 0.8 else T0 + rng.randrange(4 * DAY)
            index[lead] = random_entry(rng, changed)
            leadindex.queue_update(pipe, lead, None, index[lead])
        pipe.execute()
    with db.pipeline(transaction=False) as pipe:
        for lead in rng.sample(sorted(index), leads // 3):
            old = index[lead]
            new = random_entry(rng, rng.choice([old.changed_ms, *instants]))
            leadindex.queue_update(pipe, lead, old, new)
            index[lead] = new
        for lead in rng.sample(sorted(index), leads // 10):
            leadindex.queue_update(pipe, lead, index.pop(lead), None)
        pipe.execute()
    return index


def expected(index: dict[Lead, Entry], filters: Filters) -> list[Lead]:
    """Brute force: the matching leads by time, then member, both descending (one sorted set's order)."""
    since = filters.since_ms if filters.since_ms is not None else -1
    until = filters.until_ms if filters.until_ms is not None else 1 << 62
    found = [
        (e.changed_ms, leadindex.member(*lead).encode(), lead)
        for lead, e in index.items()
        if filters.matches(lead[0], e) and since <= e.changed_ms <= until
    ]
    return [lead for _, _, lead in sorted(found, reverse=True)]


def followed(db: redis.Redis, filters: Filters, limit: int) -> list[Lead]:
    """Every page, cursor after cursor; none longer than asked."""
    out: list[Lead] = []
    cursor = None
    for _ in range(1000):
        page = leadquery.page(db, filters, limit, cursor)
        assert len(page.rows) <= limit
        out += [(row.crm, row.lead_id) for row in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


FILTERS = [
    Filters(),
    *(Filters(outcome=o) for o in leadindex.FIXED_VALUES["outcome"]),
    *(Filters(state=s) for s in STATES),
    Filters(outcome="lost", reason="no_response"),
    Filters(outcome="open", rule="unresponsive"),
    Filters(outcome="lost", rule="breakup_grace", source="webinar"),
    Filters(outcome="lost", state="LOST"),
    Filters(outcome="won", state="LOST"),  # no lead can match
    Filters(outcome="suppressed", crm="salesforce"),
    Filters(outcome="open", stage="contractsent", segment="smb"),
    Filters(rule="breakup_grace"),
    Filters(rule="reply_resets", state="ACTIVE"),
    Filters(rule="repeated_no", reason="competitor"),
    Filters(rule="no_such_rule"),
    Filters(since_ms=T0 + DAY, until_ms=T0 + 2 * DAY - 1),
    Filters(outcome="lost", since_ms=T0 + DAY + 1, until_ms=T0 + 3 * DAY),
    Filters(rule="unresponsive", since_ms=T0 + 2 * DAY),
]


@pytest.mark.parametrize("seed", [1, 2])
def test_pages_followed_by_cursor_are_the_brute_force_answer_in_one_sets_order(db: redis.Redis, seed: int) -> None:
    index = story(db, seed)
    # The order the merge reproduces is Redis's own for one set holding every lead.
    db.zadd("reference", {leadindex.member(*lead): e.changed_ms for lead, e in index.items()})
    reference = [leadindex.lead_of(m) for m in db.zrevrangebyscore("reference", "+inf", "-inf")]
    assert reference == expected(index, Filters())
    db.delete("reference")
    for filters in FILTERS:
        want = expected(index, filters)
        for limit in (1, 4, 7, 500):
            assert followed(db, filters, limit) == want, (filters, limit)


def test_a_page_starts_inside_a_tie_that_spans_several_sets(db: redis.Redis) -> None:
    # Nine leads at one millisecond, three in each of three states: pages of two cut the tie
    # between sets, and the cursor must resume it where the page stopped.
    with db.pipeline(transaction=False) as pipe:
        for n, state in enumerate(["LOST", "ACTIVE", "REENGAGE_DUE"] * 3):
            entry = Entry(state, None, ("unresponsive",) if n % 2 else ("breakup_grace",), None, None, T0)
            leadindex.queue_update(pipe, ("hubspot", f"t{n}"), None, entry)
        leadindex.queue_update(pipe, ("hubspot", "later"), None, Entry("WON", None, (), None, None, T0 + 1))
        leadindex.queue_update(pipe, ("hubspot", "earlier"), None, Entry("LOST", None, (), None, None, T0 - 1))
        pipe.execute()
    everyone = followed(db, Filters(), 2)
    assert [lead for _, lead in everyone] == ["later", *(f"t{n}" for n in range(8, -1, -1)), "earlier"]
    assert [lead for _, lead in followed(db, Filters(outcome="lost"), 2)] == [
        *(f"t{n}" for n in (8, 6, 5, 3, 2, 0)),
        "earlier",
    ]
    assert [lead for _, lead in followed(db, Filters(rule="unresponsive"), 1)] == ["t7", "t5", "t3", "t1"]
    # A cursor is a time and a count: the second page of every lead starts two into the tie.
    first = leadquery.page(db, Filters(), 3)
    assert [row.lead_id for row in first.rows] == ["later", "t8", "t7"] and first.next_cursor
    assert leadquery.decode_cursor(first.next_cursor) == (T0, 2)
    second = leadquery.page(db, Filters(), 3, first.next_cursor)
    assert [row.lead_id for row in second.rows] == ["t6", "t5", "t4"]


def test_sets_read_on_in_batches_resume_inside_and_after_ties(db: redis.Redis) -> None:
    # 1,500 leads in runs of 1 to 40 changed at the same millisecond, one in fifteen a Salesforce
    # one: a page of Salesforce leads reads its sets a batch after another, and every batch
    # must start right after the last (inside a tie, or after one) whatever the run lengths.
    rng = random.Random(9)
    index: dict[Lead, Entry] = {}
    at = T0
    with db.pipeline(transaction=False) as pipe:
        for n in range(1500):
            if rng.random() < 0.15:
                at -= rng.randrange(1, 3)
            lead = ("salesforce" if rng.random() < 1 / 15 else "hubspot", f"r{rng.randrange(10**6):06d}{n}")
            state = rng.choice(["LOST", "ACTIVE", "REENGAGE_DUE", "ACTIVE"])
            index[lead] = Entry(state, None, (rng.choice(RULES[:2]),), None, None, at)
            leadindex.queue_update(pipe, lead, None, index[lead])
        pipe.execute()
    for filters in (
        Filters(crm="salesforce"),
        Filters(outcome="lost", crm="salesforce"),
        Filters(state="ACTIVE", crm="salesforce"),
        Filters(rule=RULES[0], crm="salesforce"),
        Filters(),
    ):
        for limit in (3, 40):
            assert followed(db, filters, limit) == expected(index, filters), (filters, limit)


@pytest.mark.parametrize("seed", [3, 4])
def test_counts_per_outcome_rule_state_and_reason_are_sums_over_the_sets(db: redis.Redis, seed: int) -> None:
    index = story(db, seed)
    since = T0 + DAY + 1

    def brute(dimension: str, since_ms: int | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for lead, e in index.items():
            if since_ms is None or e.changed_ms >= since_ms:
                for value in e.values(lead[0])[dimension]:
                    out[value] = out.get(value, 0) + 1
        return out

    for dimension in ("outcome", "state", "rule", "reason"):
        assert leadquery.counts(db, dimension) == brute(dimension), dimension
        assert leadquery.counts(db, dimension, since_ms=since) == brute(dimension, since), dimension
    # Checked against the entries, never counted.
    assert leadquery.counts(db, "source") == {} and leadquery.counts(db, "crm") == {}
    days = [(f"day{k}", T0 + k * DAY, T0 + (k + 1) * DAY) for k in range(4)]
    for dimension, values in (("state", STATES), ("outcome", ("lost", "open")), ("rule", RULES)):
        found = leadquery.per_day(db, dimension, list(values), days)
        for label, start, end in days:
            row: dict[str, int] = {}
            for lead, e in index.items():
                if start <= e.changed_ms < end:
                    for value in set(values) & e.values(lead[0])[dimension]:
                        row[value] = row.get(value, 0) + 1
            assert dict(found)[label] == row, (dimension, label)


def test_a_lead_is_in_four_sets_at_most_and_a_move_at_the_same_time_leaves_the_rest_alone() -> None:
    db = fakeredis.FakeRedis()
    lead = ("salesforce", "00Q5g000000001")
    old = Entry("LOST", "no_response", ("breakup_grace", "unresponsive"), "webinar", None, T0)
    with db.pipeline(transaction=False) as pipe:
        leadindex.queue_update(pipe, lead, None, old)
        pipe.execute()
    name = leadindex.member(*lead)
    assert name == "s00Q5g000000001" and leadindex.lead_of(name.encode()) == lead
    keys = sorted(k.decode() for k in db.scan_iter(f"{leadindex.BY_PREFIX}*"))
    assert (
        keys
        == sorted(old.sets())
        == [
            "pruner:leads:v2:by:reason:no_response",
            "pruner:leads:v2:by:rules:breakup_grace,unresponsive",
            "pruner:leads:v2:by:source:webinar",
            "pruner:leads:v2:by:state:LOST",
        ]
    )
    assert Entry.decode(db.hget(leadindex.ENTRIES_KEY, name)) == old  # type: ignore[arg-type]
    # Only the source changes: one set left, one joined, the others not written at all.
    new = Entry("LOST", "no_response", ("breakup_grace", "unresponsive"), "referral", None, T0)
    pipe = db.pipeline(transaction=False)
    leadindex.queue_update(pipe, lead, old, new)
    assert [args[0] for args, _ in pipe.command_stack] == ["ZREM", "HSET", "ZADD"]
    pipe.execute()
    assert db.zscore(leadindex.by_key("source", "referral"), name) == T0
    assert db.zscore(leadindex.by_key("state", "LOST"), name) == T0


def test_entries_store_known_words_as_codes_and_any_other_word_as_it_is() -> None:
    known = Entry("REENGAGE_DUE", "no_response", ("breakup_grace", "reengage"), None, None, T0)
    assert len(known.encode()) < 20 and Entry.decode(known.encode()) == known
    odd = Entry("LOST", "a reason from a custom policy", ("a_future_rule",), "webinar", "closedlost", T0, "smb", "high")
    assert Entry.decode(odd.encode()) == odd
    # Word codes are stored: the table only grows at its end.
    assert leadindex.WORDS[:6] == STATES and leadindex.WORDS.index("breakup_grace") == 13
