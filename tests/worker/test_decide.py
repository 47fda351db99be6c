"""What the CRM is told: actions from `worker.decide` across batches, delivered in any order."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.counters import LoggedEvent
from rules.events import format_ms
from rules.lifecycle import evaluate
from tests.rules_helpers import History, at
from worker.decide import Decider, identities
from worker.leadview import LeadView
from worker.policyfile import default_policy

P = default_policy()
NOW = at(30)


class Lead:
    """Feeds batches to a `Decider` the way the store does, and records the actions it queues."""

    def __init__(self) -> None:
        self.history: dict[bytes, LoggedEvent] = {}
        self.state: dict[str, Any] | None = None
        self.actions: list[dict[str, Any]] = []
        self.new_decisions: list[tuple[str, str, str | None]] = []

    def deliver(self, batch: list[LoggedEvent], now: int = NOW) -> list[dict[str, Any]]:
        added = [e for e in batch if e.key not in self.history]
        self.history.update((e.key, e) for e in added)
        view = LeadView(
            "hubspot", "L1", sorted(self.history.values(), key=LoggedEvent.sort_key), self.state, len(added)
        )
        outcome = Decider(P, now)(view)
        if outcome.state is not None:
            self.state = outcome.state
        self.actions += outcome.actions
        self.new_decisions += outcome.new_decisions
        return outcome.actions

    def suppress_channels(self) -> list[list[str]]:
        return [a["channels"] for a in self.actions if a["kind"] == "suppress"]


def covered(channels: list[str] | set[str]) -> set[str]:
    """The CRM opt-outs a list of channels sets: "all" is email and phone."""
    return {"email", "phone"} if "all" in channels else set(channels)


def dnc(h: History, days: float, *channels: str) -> LoggedEvent:
    h.add("do_not_contact", at(days), channels=list(channels))
    return h.events[-1]


def test_in_order_email_then_phone_tells_the_crm_about_phone() -> None:
    h = History()
    email, phone = dnc(h, 0, "email"), dnc(h, 3, "phone")
    lead = Lead()
    lead.deliver([email])
    lead.deliver([phone])
    assert lead.suppress_channels() == [["email"], ["email", "phone"]]


def test_reverse_order_ends_with_the_crm_told_both_channels() -> None:
    h = History()
    email, phone = dnc(h, 0, "email"), dnc(h, 3, "phone")
    lead = Lead()
    lead.deliver([phone])
    lead.deliver([email])
    told = lead.suppress_channels()
    assert told[0] == ["phone"] and told[-1] == ["email", "phone"]
    assert lead.state is not None and lead.state["state"] == "SUPPRESSED"


def test_both_opt_outs_in_one_batch_tell_both_channels_at_once() -> None:
    h = History()
    batch = [dnc(h, 0, "email"), dnc(h, 3, "phone")]
    lead = Lead()
    lead.deliver(batch)
    assert lead.suppress_channels() == [["email", "phone"]]


def test_a_duplicate_do_not_contact_adds_nothing() -> None:
    h = History()
    first = dnc(h, 0, "email", "phone")
    lead = Lead()
    lead.deliver([first])
    decisions = list(lead.state["decisions"]) if lead.state else []
    # The same event redelivered, then the same opt-out restated later under a new id.
    assert lead.deliver([first]) == []
    assert lead.deliver([dnc(h, 2, "phone"), dnc(h, 4, "all")], now=NOW + 1) == []
    assert lead.state is not None and lead.state["decisions"] == decisions
    assert [rule for rule, _, _ in lead.new_decisions] == ["do_not_contact"]


KINDS = [
    ("do_not_contact", ["email"]),
    ("do_not_contact", ["phone"]),
    ("do_not_contact", ["all"]),
    ("consent_given", None),
]


def build(kinds: list[int]) -> History:
    """One event per entry, a day apart: distinct instants, so "since the last consent" is unambiguous."""
    h = History()
    for day, kind in enumerate(kinds):
        etype, channels = KINDS[kind]
        if channels is None:
            h.add(etype, at(day))
        else:
            h.add(etype, at(day), channels=channels)
    return h


def channels_since_last_consent(h: History) -> set[str]:
    events = sorted(h.events, key=LoggedEvent.sort_key)
    last = max((i for i, e in enumerate(events) if e.type.value == "consent_given"), default=-1)
    return {c for e in events[last + 1 :] for c in covered(e.data.get("channels", []))}


def told_since_last_consent(lead: Lead, h: History) -> set[str]:
    """Channels of the suppress actions queued for the decisions of the lead's current suppression."""
    decisions = evaluate(h.events, P, NOW).decisions
    last = max((i for i, d in enumerate(decisions) if d.rule == "consent_given"), default=-1)
    # An action serves a decision of the current suppression if it names it either way: by
    # identity, or by rule and time (a decision first acted on under another episode's name).
    names = {f"hubspot:L1:{name}" for name in identities(decisions)[last + 1 :]}
    moments = {(d.rule, format_ms(d.at_ms)) for d in decisions[last + 1 :]}
    return {
        c
        for a in lead.actions
        if a["kind"] == "suppress" and (a["id"] in names or (a["rule"], a["at"]) in moments)
        for c in covered(a["channels"])
    }


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.lists(st.integers(0, len(KINDS) - 1), min_size=1, max_size=6),
    seed=st.integers(0, 10**6),
    dup_every=st.integers(1, 4),
)
def test_the_crm_ends_up_told_every_channel_objected_to_since_the_last_consent(
    kinds: list[int], seed: int, dup_every: int
) -> None:
    h = build(kinds)
    rng = random.Random(seed)
    stream = h.events + h.events[::dup_every]
    rng.shuffle(stream)
    lead = Lead()
    for event in stream:  # one event a batch: every arrival order is a separate re-evaluation
        lead.deliver([event])
    # Pruner never takes an opt-out back (a late consent cannot unsay what the CRM was told):
    # every channel objected to since the last consent has reached the CRM, and nothing else.
    told = {c for a in lead.actions if a["kind"] == "suppress" for c in covered(a["channels"])}
    ever = {c for e in h.events if e.type.value == "do_not_contact" for c in covered(e.data.get("channels", []))}
    assert channels_since_last_consent(h) <= told <= ever
    in_order = Lead()
    for event in h.events:
        in_order.deliver([event])
    assert told_since_last_consent(in_order, h) == channels_since_last_consent(h)


def test_a_late_follow_up_does_not_send_the_break_up_task_again() -> None:
    # Ten emails, a reply, then four follow-ups: the fourth asks for a break-up message. The
    # first follow-up is delivered last, which moves the moment the rule fires by a day.
    h = History()
    for day in range(10):
        h.add("email_sent", at(day))
    h.add("email_replied", at(9, hours=1))
    follow_ups = [h.add("email_sent", at(10 + i)).events[-1] for i in range(4)]
    now = at(16)
    in_order, late = Lead(), Lead()
    for event in h.events:
        in_order.deliver([event], now)
    for event in [e for e in h.events if e is not follow_ups[0]] + [follow_ups[0]]:
        late.deliver([event], now)
    assert [a["kind"] for a in in_order.actions] == ["breakup_task"]
    assert [a["kind"] for a in late.actions] == ["breakup_task"]


MIX = ["email_sent", "email_sent", "call_attempted", "email_replied", "not_interested", "reopened"]


@settings(max_examples=200, deadline=None)
@given(
    spec=st.lists(st.tuples(st.integers(0, len(MIX) - 1), st.integers(0, 40)), min_size=1, max_size=30),
    seed=st.integers(0, 10**6),
    batch=st.integers(1, 5),
)
def test_no_decision_is_acted_on_twice_whatever_the_order(spec: list[tuple[int, int]], seed: int, batch: int) -> None:
    h = History().touches(12, at(-1))  # one touch short of the guardrail
    for kind, half_days in spec:
        h.add(MIX[kind], at(half_days / 2))
    rng = random.Random(seed)
    stream = h.events + rng.sample(h.events, min(5, len(h.events)))  # and some redeliveries
    rng.shuffle(stream)
    lead = Lead()
    most: dict[tuple[str, str], int] = {}  # per (rule, action): the most decisions implying it in one story
    for start in range(0, len(stream), batch):
        lead.deliver(stream[start : start + batch], at(60))
        story = evaluate(sorted(lead.history.values(), key=LoggedEvent.sort_key), P, at(60)).decisions
        counts = Counter((d.rule, d.action.value) for d in story if d.action is not None)
        for pair, n in counts.items():
            most[pair] = max(most.get(pair, 0), n)
    # A story revised by late events may act on a decision it later drops or replaces (a LOST
    # undone by an earlier reply delivered late, a LOST for another reason), but never twice on
    # one decision whose time merely moved.
    # Tasks are what a repeat would make visible (a rep asked twice); a repeated mark_lost or
    # suppress sets what is already set.
    sent = Counter((a["rule"], a["kind"]) for a in lead.actions if a["kind"].endswith("_task"))
    assert all(n <= most[pair] for pair, n in sent.items()), (sent, most)


def test_decisions_acted_on_by_an_older_version_are_not_sent_again() -> None:
    # Versions before 2026-11-25 recorded `rule:state:time` keys in `acted`: an upgrade
    # must not re-send every lead's actions.
    h = History().touches(13, at(0)).add("not_interested", at(1)).add("not_interested", at(1, hours=1))
    lead = Lead()
    lead.deliver(h.events, at(2))
    assert [a["kind"] for a in lead.actions] == ["mark_lost"]
    assert lead.state is not None
    story = evaluate(sorted(lead.history.values(), key=LoggedEvent.sort_key), P, at(2)).decisions
    lead.state["acted"] = [d.key for d in story]  # what the older version stored
    assert lead.deliver([h.add("email_sent", at(2)).events[-1]], at(3)) == []


def reschedule(h: History, days: float) -> LoggedEvent:
    h.add("meeting_rescheduled", at(days), first_meeting=False)
    return h.events[-1]


def test_an_earlier_episode_arriving_late_does_not_repeat_the_break_up_task() -> None:
    # Two reschedules on days 10 and 11 ask for a break-up; then an earlier episode arrives
    # late (two reschedules and a reply on days 1-3). The day-11 break-up is the same one.
    h = History()
    later = [reschedule(h, 10), reschedule(h, 11)]
    earlier = [reschedule(h, 1), reschedule(h, 2), h.add("email_replied", at(3)).events[-1]]
    lead = Lead()
    lead.deliver(later, at(12))
    assert lead.deliver(earlier, at(12)) == []
    assert [a["kind"] for a in lead.actions] == ["breakup_task"]


def test_a_new_break_up_after_a_reply_is_sent_though_an_earlier_one_was_overtaken() -> None:
    # A break-up (days 1-2) turned into a loss by two late "no"s, then a reply and a new pair
    # of reschedules: that second break-up is a new one, and the rep must hear of it.
    h = History()
    lead = Lead()
    lead.deliver([reschedule(h, 1), reschedule(h, 2)], at(2.1))
    lead.deliver([h.add("not_interested", at(0.5)).events[-1], h.add("not_interested", at(1.5)).events[-1]], at(2.2))
    third = [h.add("email_replied", at(3)).events[-1], reschedule(h, 10), reschedule(h, 11)]
    assert [a["kind"] for a in lead.deliver(third, at(11.1))] == ["breakup_task"]


def test_a_long_story_neither_repeats_its_current_action_nor_recounts_old_decisions() -> None:
    # 51 break-up/reply cycles and a final break-up (over 100 decisions), then ordinary
    # emails one batch at a time: the remembered decisions must not churn out of `acted`.
    h = History()
    first: list[LoggedEvent] = []
    for i in range(51):
        first += [
            reschedule(h, i * 0.3),
            reschedule(h, i * 0.3 + 0.1),
            h.add("email_replied", at(i * 0.3 + 0.2)).events[-1],
        ]
    first += [reschedule(h, 15.3), reschedule(h, 15.4)]
    lead = Lead()
    lead.deliver(first, at(15.5))
    told = len(lead.actions)
    counted = len(lead.new_decisions)
    for k in range(60):
        lead.deliver([h.add("email_sent", at(15.5, hours=k * 0.01)).events[-1]], at(15.6))
    assert len(lead.actions) == told and len(lead.new_decisions) == counted
    assert lead.state is not None and len(lead.state["acted"]) <= 200
