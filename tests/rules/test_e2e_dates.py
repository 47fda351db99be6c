"""The integration tests' dated histories hold on every day of the year.

The processes those tests start run on the wall clock, so their histories are dated from
today; a history that lands on a quiet day (a US holiday, Dec 24 - Jan 1) or a grace that
outlasts the holidays made them pass on one day and fail on another (2026-12-06, ninety days
after Labor Day). Here the same histories go through the pure core, dated from every day of
three years: what the integration tests assert must hold on each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from rules.counters import LoggedEvent
from rules.events import EventType, format_ms
from rules.lifecycle import evaluate
from rules.states import State
from tests.integration.support import days_past_grace, loud_day
from worker.policyfile import default_policy

P = default_policy()
DAY = timedelta(days=1)


def every_day() -> Iterator[datetime]:
    """Each day of 2026-2028, at 13:30 UTC."""
    first = datetime(2026, 1, 1, 13, 30, tzinfo=UTC)
    return (first + n * DAY for n in range(3 * 366))


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def logged(n: int, kind: EventType, when: datetime) -> LoggedEvent:
    return LoggedEvent(ms(when), kind, n.to_bytes(8, "big"), {})


def test_silent_for_months_then_a_task_then_lost_on_every_day() -> None:
    # tests/integration/test_hubspot_actions.py: silent_for_months and the grace sweep.
    failures = []
    for today in every_day():
        start = loud_day(today, 90, 1)
        emails = [logged(i, EventType.EMAIL_SENT, start + timedelta(minutes=i)) for i in range(15)]
        waiting = evaluate(emails, P, ms(today), grace_from_task=True)
        from_decision = evaluate(emails, P, ms(today))  # a dry run, or the task clock off
        with_task = [*emails, logged(99, EventType.BREAKUP_TASK_CREATED, today)]
        soon = evaluate(with_task, P, ms(today + 3 * DAY), grace_from_task=True)
        later = evaluate(with_task, P, ms(today + days_past_grace(today, 7) * DAY), grace_from_task=True)
        got = (waiting.state, from_decision.state, soon.state, later.state)
        if got != (State.BREAKUP_DUE, State.LOST, State.BREAKUP_DUE, State.LOST):
            failures.append((today.date().isoformat(), [s.value for s in got]))
    assert not failures, failures[:5]


def test_the_rules_e2e_grace_story_on_every_day() -> None:
    # tests/integration/test_rules_e2e.py test_breakup_grace_then_reengage_by_sweep (a dry run).
    failures = []
    for now in every_day():
        start = loud_day(now, 2, 1)
        calls = [logged(i, EventType.CALL_ATTEMPTED, start + timedelta(hours=i)) for i in range(13)]
        states = [evaluate(calls, P, ms(when)).state for when in (now, now + 3 * DAY, now + 20 * DAY)]
        if states != [State.BREAKUP_DUE, State.BREAKUP_DUE, State.LOST]:
            failures.append((now.date().isoformat(), [s.value for s in states]))
    assert not failures, failures[:5]


def test_the_rules_e2e_proposal_story_on_every_day() -> None:
    # tests/integration/test_rules_e2e.py test_proposal_expired_by_sweep: 28 non-quiet days after
    # expiry, swept 45 days on (the year-end quiet period and the January holidays included).
    failures = []
    for now in every_day():
        start = now - 3 * DAY
        events = [logged(i, EventType.EMAIL_SENT, start + timedelta(hours=i)) for i in range(13)]
        events.append(logged(50, EventType.EMAIL_REPLIED, start + DAY))
        expires = {"expires_at": format_ms(ms(now - timedelta(hours=1)))}
        events.append(LoggedEvent(ms(start + 2 * DAY), EventType.PROPOSAL_SENT, (51).to_bytes(8, "big"), expires))
        before, after = evaluate(events, P, ms(now)), evaluate(events, P, ms(now + 45 * DAY))
        if (before.state, after.state, after.loss_reason) != (State.ACTIVE, State.LOST, "proposal_expired"):
            failures.append((now.date().isoformat(), before.state.value, after.state.value, after.loss_reason))
    assert not failures, failures[:5]
