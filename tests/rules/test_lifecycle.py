"""Each rule and guardrail of docs/lifecycle.md, on the pure core."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.lifecycle import evaluate
from rules.policy import parse_policy
from rules.states import State
from tests.rules_helpers import History, at, ms
from worker.policyfile import default_policy

P = default_policy()
DAY = 86_400_000


def final(h: History, now: int | None = None, policy=P):  # type: ignore[no-untyped-def]
    now = now if now is not None else max(e.occurred_ms for e in h.events) + 1
    return evaluate(h.events, policy, now)


def test_repeated_no_goes_straight_to_lost() -> None:
    h = History().touches(2, at(0)).add("not_interested", at(1)).add("not_interested", at(2))
    ev = final(h)
    assert (ev.state, ev.loss_reason) == (State.LOST, "not_interested")
    assert ev.decisions[-1].inputs == {"not_interested": 2, "threshold": 2}


def test_one_no_is_not_enough() -> None:
    assert final(History().add("not_interested", at(1))).state is State.ACTIVE


@pytest.mark.parametrize(
    ("reason", "category"),
    [("Budget frozen until Q3", "budget"), ("We went with Acme", "competitor"), ("sunspots", "other")],
)
def test_decisive_no_uses_the_reason_category(reason: str, category: str) -> None:
    ev = final(History().add("decision_no", at(1), reason=reason))
    assert (ev.state, ev.loss_reason, ev.decisions[0].rule) == (State.LOST, category, "decisive_no")


def test_pushed_back_counts_only_follow_up_meetings() -> None:
    h = History().add("meeting_rescheduled", at(1), first_meeting=True).add("meeting_rescheduled", at(2))
    assert final(h).state is State.ACTIVE
    h.add("meeting_rescheduled", at(3))
    ev = final(h)
    assert (ev.state, ev.decisions[0].rule, ev.decisions[0].reason) == (
        State.BREAKUP_DUE,
        "pushed_back",
        "deprioritized",
    )


def test_unresponsive_needs_13_touches_first() -> None:
    h = History().touches(12, at(0))  # 11 follow-ups, but only 12 touches in all
    assert final(h).state is State.ACTIVE
    h.add("email_sent", at(1))
    ev = final(h)
    assert ev.state is State.BREAKUP_DUE
    assert ev.decisions[0].rule == "unresponsive"
    assert ev.decisions[0].inputs["outbound_touches"] == 13


def test_a_reply_resets_silence() -> None:
    h = History().touches(12, at(0)).add("email_replied", at(1)).touches(2, at(2))
    assert final(h).state is State.ACTIVE  # 14 touches but only 2 follow-ups since the reply
    h.add("email_sent", at(3))
    assert final(h).state is State.BREAKUP_DUE


def test_bigger_deals_get_more_follow_ups() -> None:
    def history(amount: float | None) -> History:
        h = History()
        if amount:
            h.add("deal_updated", at(0), amount=amount)
        return h.touches(8, at(0, 1)).add("email_replied", at(1)).touches(5, at(2))

    assert final(history(None)).state is State.BREAKUP_DUE  # 5 follow-ups >= 3
    big = history(60_000)
    assert final(big).state is State.ACTIVE  # 5 < 3 x 2
    big.add("email_sent", at(3))
    decision = final(big).decisions[-1]
    assert (decision.rule, decision.inputs["threshold"]) == ("unresponsive", 6)


def test_effort_exceeds_value_scales_with_tier() -> None:
    small = History().add("time_logged", at(1), minutes=721)  # > 4 x 180
    ev = final(small)
    assert (ev.state, ev.decisions[0].rule) == (State.BREAKUP_DUE, "effort_exceeds_value")
    big = History().add("deal_updated", at(0), amount=300_000).add("time_logged", at(1), minutes=721)
    assert final(big).state is State.ACTIVE  # typical 1,200 minutes for this tier


def test_breakup_grace_counts_business_days() -> None:
    h = History().touches(15, at(0, -20), step_ms=60_000)  # Monday: BREAKUP_DUE at once
    ev = final(h, now=at(8))  # next Tuesday: 6 business days
    assert ev.state is State.BREAKUP_DUE
    assert ev.next_due_ms is not None
    ev = final(h, now=at(9, 1))  # Wednesday after: 7 business days passed
    assert (ev.state, ev.loss_reason, ev.decisions[-1].rule) == (State.LOST, "no_response", "breakup_grace")
    # Entered BREAKUP_DUE on Sunday with the 13th touch; 7 business days later is Tuesday week.
    assert ev.decisions[-1].at_ms == h.events[12].occurred_ms + 9 * DAY


def test_reply_in_grace_returns_to_active() -> None:
    h = History().touches(15, at(0, -20), step_ms=60_000).add("email_replied", at(3))
    ev = final(h, now=at(30))
    assert ev.state is State.ACTIVE
    assert [d.rule for d in ev.decisions] == ["unresponsive", "reply_resets"]


def test_proposal_expired() -> None:
    h = History().touches(13, at(-10), step_ms=60_000).add("email_replied", at(-9))
    h.add("proposal_sent", at(-5), expires_at="2026-03-02T10:00:00Z")
    assert final(h, now=at(27)).state is State.ACTIVE
    ev = final(h, now=at(28))
    assert (ev.state, ev.loss_reason) == (State.LOST, "proposal_expired")


def test_a_call_returned_after_expiry_keeps_the_proposal_alive() -> None:
    h = History().touches(13, at(-10), step_ms=60_000).add("email_replied", at(-9))
    h.add("proposal_sent", at(-5), expires_at="2026-03-02T10:00:00Z").add("call_connected", at(3))
    assert final(h, now=at(60)).state is State.ACTIVE


CALLS_ONLY = parse_policy("rules: {unresponsive: {enabled: false}}", P)


def test_call_cadence_exhausted_after_four_weeks() -> None:
    # With the defaults `unresponsive` and its grace end a silent call streak in ~2 weeks;
    # the cadence rule is what remains when a team turns that off for call-led sales.
    h = History()
    for week in range(4):
        h.touches(10, at(7 * week), etype="call_attempted", step_ms=3_600_000)
    assert final(h).decisions[-1].rule == "breakup_grace"
    ev = final(h, policy=CALLS_ONLY)
    assert (ev.state, ev.loss_reason, ev.decisions[-1].rule) == (State.LOST, "no_response", "call_cadence_exhausted")


def test_three_weeks_of_calls_are_not_enough_and_a_gap_breaks_the_streak() -> None:
    h = History()
    for week in (0, 1, 2, 4):
        h.touches(10, at(7 * week), etype="call_attempted", step_ms=3_600_000)
    assert final(h, policy=CALLS_ONLY).state is State.ACTIVE


def test_lost_leads_are_reengaged_after_120_days() -> None:
    h = History().add("not_interested", at(0)).add("not_interested", at(1))
    assert final(h, now=at(120)).state is State.LOST
    ev = final(h, now=at(121, 1))
    assert (ev.state, ev.decisions[-1].rule) == (State.REENGAGE_DUE, "reengage")


def test_do_not_contact_wins_and_only_consent_leaves() -> None:
    h = History().add("do_not_contact", at(0), channels=["email"]).add("not_interested", at(1))
    h.add("not_interested", at(2)).add("email_replied", at(3)).add("reopened", at(4))
    ev = final(h, now=at(400))
    assert ev.state is State.SUPPRESSED
    assert [d.rule for d in ev.decisions] == ["do_not_contact"]
    h.add("consent_given", at(5))
    assert final(h).state is State.ACTIVE


def test_quiet_days_do_not_count_as_silence() -> None:
    # 12 touches in November, then follow-ups between Dec 24 and Jan 1 only.
    h = History().touches(12, ms(datetime(2026, 11, 2, 10, tzinfo=UTC)))
    h.add("email_replied", ms(datetime(2026, 11, 3, tzinfo=UTC)))
    for day in (24, 27, 29, 30):
        h.add("email_sent", ms(datetime(2026, 12, day, 10, tzinfo=UTC)))
    assert final(h).state is State.ACTIVE
    h.add("email_sent", ms(datetime(2027, 1, 4, 10, tzinfo=UTC)))
    h.add("email_sent", ms(datetime(2027, 1, 5, 10, tzinfo=UTC)))
    h.add("email_sent", ms(datetime(2027, 1, 6, 10, tzinfo=UTC)))
    assert final(h).state is State.BREAKUP_DUE


def test_lost_beats_breakup_when_both_hold() -> None:
    h = History().touches(12, at(0), step_ms=60_000)
    h.add("not_interested", at(1)).add("not_interested", at(1, 1))
    h.add("email_sent", at(1, 1))  # same instant: touches reach 13 and the second "no" lands
    assert [d.rule for d in final(h).decisions] == ["repeated_no"]


def test_policy_can_disable_and_tune() -> None:
    policy = parse_policy("rules: {repeated_no: {min_not_interested: 3}, decisive_no: {enabled: false}}", P)
    h = History().add("not_interested", at(0)).add("not_interested", at(1)).add("decision_no", at(2), reason="no")
    assert final(h, policy=policy).state is State.ACTIVE
    h.add("not_interested", at(3))
    assert final(h, policy=policy).state is State.LOST


def test_a_later_phone_opt_out_widens_the_suppression() -> None:
    h = History().add("do_not_contact", at(0), channels=["email"]).add("do_not_contact", at(3), channels=["phone"])
    ev = final(h)
    assert ev.state is State.SUPPRESSED
    first, widened = ev.decisions
    assert (first.rule, first.inputs["channels"]) == ("do_not_contact", ["email"])
    assert (widened.rule, widened.source, widened.to) == ("do_not_contact_channels", State.SUPPRESSED, State.SUPPRESSED)
    assert widened.inputs == {"channels": ["email", "phone"], "added": ["phone"]}
    assert widened.at_ms == at(3) and widened.key != first.key


def test_opt_outs_of_the_same_instant_get_distinct_keys() -> None:
    h = History().add("do_not_contact", at(0), channels=["phone"]).add("do_not_contact", at(0), channels=["email"])
    ev = final(h)
    assert [d.rule for d in ev.decisions] == ["do_not_contact", "do_not_contact_channels"]
    assert len({d.key for d in ev.decisions}) == 2
    assert ev.decisions[-1].inputs["channels"] == ["email", "phone"]


@pytest.mark.parametrize(
    ("first", "second"),
    [(["email"], ["email"]), (["all"], ["email"]), (["all"], ["phone"]), (["email", "phone"], ["all"])],
)
def test_a_do_not_contact_that_adds_no_channel_decides_nothing(first: list[str], second: list[str]) -> None:
    h = History().add("do_not_contact", at(0), channels=first).add("do_not_contact", at(2), channels=second)
    assert [d.rule for d in final(h).decisions] == ["do_not_contact"]


def test_all_after_one_channel_covers_the_other() -> None:
    h = History().add("do_not_contact", at(0), channels=["phone"]).add("do_not_contact", at(2), channels=["all"])
    widened = final(h).decisions[-1]
    assert widened.inputs == {"channels": ["all", "phone"], "added": ["email"]}


def test_consent_starts_the_channels_afresh() -> None:
    h = History().add("do_not_contact", at(0), channels=["email"]).add("consent_given", at(1))
    h.add("do_not_contact", at(2), channels=["phone"]).add("do_not_contact", at(3), channels=["phone"])
    ev = final(h)
    assert [(d.rule, d.inputs.get("channels")) for d in ev.decisions] == [
        ("do_not_contact", ["email"]),
        ("consent_given", None),
        ("do_not_contact", ["phone"]),
    ]


def test_a_suppression_list_entry_already_covers_every_channel() -> None:
    h = History().add("email_sent", at(0)).add("do_not_contact", at(1), channels=["phone"])
    ev = evaluate(h.events, P, at(2), suppressed=True)
    assert [d.rule for d in ev.decisions] == ["suppression_list"]
