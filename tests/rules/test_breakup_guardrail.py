"""Guardrail 7 (docs/lifecycle.md): a break-up is never skipped; its grace runs from the task's creation."""

from __future__ import annotations

import random

from rules.calendar import calendar_for
from rules.events import format_ms
from rules.lifecycle import evaluate
from rules.states import State
from tests.rules_helpers import History, at
from worker.policyfile import default_policy

P = default_policy()
DAY = 86_400_000


def seven_business_days(start: int) -> int:
    return calendar_for(P).add_business_days(start, 7)


def silent() -> History:
    """15 unanswered emails: BREAKUP_DUE on the 13th (day 0, Sunday evening), as in test_lifecycle."""
    return History().touches(15, at(0, -20), step_ms=60_000)


def test_a_lead_found_silent_late_waits_in_breakup_due_for_its_task() -> None:
    h = silent()
    # Months later, no task yet (discovered by a backfill, or the CRM unreachable): no LOST.
    ev = evaluate(h.events, P, at(200), grace_from_task=True)
    assert (ev.state, [d.rule for d in ev.decisions]) == (State.BREAKUP_DUE, ["unresponsive"])
    assert ev.next_due_ms is None  # nothing to wake up for until the task exists
    # Without the task clock (a simulation, a dry run) the grace ran from the decision: lost
    # long ago, and by now due for the check-in months later.
    assert evaluate(h.events, P, at(200)).state is State.REENGAGE_DUE


def test_the_grace_runs_seven_business_days_from_the_task() -> None:
    h = silent().add("breakup_task_created", at(120))
    due = seven_business_days(at(120))
    assert due >= at(120) + 7 * DAY
    assert evaluate(h.events, P, due - 1, grace_from_task=True).state is State.BREAKUP_DUE
    ev = evaluate(h.events, P, due + 1, grace_from_task=True)
    assert (ev.state, ev.decisions[-1].rule) == (State.LOST, "breakup_grace")
    assert ev.decisions[-1].at_ms == due
    assert ev.decisions[-1].inputs["grace_since"].startswith("2026-")
    assert ev.decisions[-1].inputs["breakup_since"] < ev.decisions[-1].inputs["grace_since"]


def test_a_task_for_an_earlier_break_up_does_not_start_the_next_ones_grace() -> None:
    h = silent().add("breakup_task_created", at(1)).add("email_replied", at(2))  # back to ACTIVE
    h.touches(4, at(3))  # silent again: a second break-up
    ev = evaluate(h.events, P, at(60), grace_from_task=True)
    assert ev.state is State.BREAKUP_DUE and ev.decisions[-1].rule == "unresponsive"
    h.add("breakup_task_created", at(61))
    assert evaluate(h.events, P, at(75), grace_from_task=True).state is State.LOST


def test_a_reply_after_the_task_returns_the_lead_to_active() -> None:
    h = silent().add("breakup_task_created", at(1)).add("email_replied", at(5))
    assert evaluate(h.events, P, at(60), grace_from_task=True).state is State.ACTIVE


def test_any_delivery_order_gives_the_same_outcome() -> None:
    h = silent().add("breakup_task_created", at(3)).add("breakup_task_created", at(4))  # a repeat changes nothing
    expected = evaluate(h.events, P, at(30), grace_from_task=True)
    assert expected.state is State.LOST and expected.decisions[-1].at_ms == seven_business_days(at(3))
    for seed in range(20):
        shuffled = list(h.events)
        random.Random(seed).shuffle(shuffled)
        ev = evaluate(shuffled, P, at(30), grace_from_task=True)
        assert (ev.state, ev.decisions) == (expected.state, expected.decisions)


def test_a_task_event_is_not_lead_activity() -> None:
    h = silent()
    before = evaluate(h.events, P, at(2), grace_from_task=True).counters
    h.add("breakup_task_created", at(1))
    after = evaluate(h.events, P, at(2), grace_from_task=True).counters
    assert after.last_event_ms == before.last_event_ms and after.outbound_touches == before.outbound_touches


def test_explain_says_whether_the_grace_has_started() -> None:
    from rules.explain import progress

    waiting = evaluate(silent().events, P, at(30), grace_from_task=True)
    assert any("waiting for the break-up task to be created" in line for line in progress(waiting.progress))
    h = silent().add("breakup_task_created", at(31))
    running = evaluate(h.events, P, at(32), grace_from_task=True)
    [line] = [line for line in progress(running.progress) if line.startswith("breakup_grace")]
    assert "from the break-up task" in line and "until" in line
    assert "breakup_grace" not in evaluate(h.events, P, at(60), grace_from_task=True).progress  # LOST by then


def moved_break_up() -> tuple[History, int]:
    """A break-up (13th email) whose task is created 30 s later, naming that decision."""
    h = History().touches(12, at(0, -20), step_ms=60_000).touches(3, at(0, -10), step_ms=60_000)
    [decision] = evaluate(h.events, P, at(0, -9), grace_from_task=True).decisions
    assert decision.rule == "unresponsive" and decision.at_ms == at(0, -10)
    h.add("breakup_task_created", decision.at_ms + 30_000, decision_at=format_ms(decision.at_ms))
    return h, decision.at_ms


def test_a_break_up_that_late_events_move_past_its_task_still_starts_its_grace() -> None:
    h, first = moved_break_up()
    assert evaluate(h.events, P, at(30), grace_from_task=True).state is State.LOST
    # A reply dated before the break-up arrives late: silence restarts, and the same break-up
    # (same episode, same name) now fires two emails later, after its task was created.
    h.add("email_replied", at(0, -15))
    ev = evaluate(h.events, P, at(1), grace_from_task=True)
    [moved] = ev.decisions
    assert moved.at_ms > first + 30_000 and moved.name == "unresponsive:BREAKUP_DUE@0#1"
    # The task exists: the grace runs from the moved decision (before, the lead waited for good).
    assert ev.next_due_ms == seven_business_days(moved.at_ms)
    lost = evaluate(h.events, P, at(30), grace_from_task=True)
    assert (lost.state, lost.decisions[-1].at_ms) == (State.LOST, seven_business_days(moved.at_ms))
    for seed in range(10):
        shuffled = list(h.events)
        random.Random(seed).shuffle(shuffled)
        assert evaluate(shuffled, P, at(30), grace_from_task=True).decisions == lost.decisions


def test_a_task_named_for_an_earlier_episode_does_not_start_a_later_break_ups_grace() -> None:
    h, first = moved_break_up()
    # The lead replied after its break-up (a new episode), went silent again, and the first
    # break-up's task was only created after the reply (the owner's daily budget held it).
    h.events.pop()
    h.add("email_replied", first + 60_000).touches(4, at(3))
    h.add("breakup_task_created", at(2), decision_at=format_ms(first))
    ev = evaluate(h.events, P, at(60), grace_from_task=True)
    assert ev.state is State.BREAKUP_DUE and ev.decisions[-1].name == "unresponsive:BREAKUP_DUE@1#1"
    assert ev.next_due_ms is None  # waiting for its own task
