"""Property tests: delivery order, duplicates and batching never change the outcome."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.events import Crm, Event, EventType, format_ms, versioned
from rules.lifecycle import evaluate
from rules.states import CONTACT_ACTIONS, ActionKind
from tests.rules_helpers import at
from worker.decide import MAX_DECISIONS_KEPT, Decider
from worker.policyfile import default_policy
from worker.store import LeadStore

# Order independence over the whole story: nothing folded past a retention horizon here (what
# folding keeps and what it ignores is tested in tests/worker/test_fold.py).
P = replace(default_policy(), retention_horizon_days=0)
NOW = at(200)
KINDS = [
    ("email_sent", {}),
    ("email_sent", {}),
    ("call_attempted", {}),
    ("call_attempted", {}),
    ("email_replied", {}),
    ("call_connected", {}),
    ("not_interested", {}),
    ("meeting_rescheduled", {}),
    ("meeting_rescheduled", {"first_meeting": True}),
    ("time_logged", {"minutes": 120}),
    ("deal_updated", {"amount": 80_000}),
    ("decision_no", {"reason": "budget"}),
    ("proposal_sent", {"expires_at": format_ms(at(20))}),
    ("reopened", {}),
    # Won and reopened deals, a converted lead: WON and back, in any order.
    ("deal_updated", {"deal_id": "d1", "stage": "closedwon"}),
    ("deal_updated", {"deal_id": "d1", "stage": "qualifiedtobuy"}),
    ("deal_updated", {"deal_id": "d2", "stage": "appointmentscheduled", "amount": 5_000}),
    ("deal_updated", {"deal_id": "d3", "stage": "Negotiation", "won": True}),
    ("deal_updated", {"deal_id": "d2", "stage": "closedlost"}),
    ("lead_profile", {"converted": True}),
    # Versions of one CRM call (attempted, then corrected to connected, or the other way) and of a
    # meeting's outcome: only the latest modification counts, whatever arrives last.
    ("call_attempted", versioned("call-1", at(1))),
    ("call_connected", versioned("call-1", at(2))),
    ("call_attempted", versioned("call-1", at(3))),
    ("meeting_held", versioned("meeting-1", at(1))),
    ("meeting_no_show", versioned("meeting-1", at(2))),
    ("email_replied", versioned("email-1", at(2))),
    ("email_sent", versioned("email-1", at(1))),
    # The CRM confirming a break-up task (guardrail 7): the grace starts there, when it is on.
    ("breakup_task_created", {}),
    # ...and tasks naming the break-up they were created for (the drain's), whichever episode
    # that decision falls in and whether it fires before or after the task.
    ("breakup_task_created", {"decision_at": format_ms(at(2))}),
    ("breakup_task_created", {"decision_at": format_ms(at(10))}),
]

event_st = st.tuples(st.integers(0, len(KINDS) - 1), st.integers(0, 60 * 24 * 40))


def build(raw: list[tuple[int, int]], lead: str = "P") -> list[Event]:
    events = []
    for n, (kind, minute) in enumerate(raw):
        etype, data = KINDS[kind]
        events.append(Event(f"e{n}", EventType(etype), Crm.HUBSPOT, lead, at(0) + minute * 60_000, dict(data)))
    return events


def deliver(events: list[Event], seed: int, dup_every: int) -> list[list[Event]]:
    """Shuffle, duplicate some events, and cut into batches."""
    rng = random.Random(seed)
    stream = events + events[::dup_every]
    rng.shuffle(stream)
    cuts = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1))) if len(stream) > 1 else []
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def outcome_through_store(batches: list[list[Event]], now: int, task: bool = False) -> dict[str, Any]:
    store = LeadStore(fakeredis.FakeRedis())
    for batch in batches:
        store.apply_batch(batch, Decider(P, now, grace_from_task=task))
    state = store.state("hubspot", "P") or {"state": "ACTIVE", "decisions": []}
    return {"state": state["state"], "decisions": state["decisions"], "actions": store.actions()}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(event_st, min_size=1, max_size=30),
    seed=st.integers(0, 10**6),
    dup=st.integers(1, 5),
    task=st.booleans(),
)
def test_shuffled_duplicated_batched_histories_decide_the_same(
    raw: list[tuple[int, int]], seed: int, dup: int, task: bool
) -> None:
    events = build(raw)
    once = outcome_through_store([events], NOW, task)
    again = outcome_through_store(deliver(events, seed, dup), NOW, task)
    assert (again["state"], again["decisions"]) == (once["state"], once["decisions"])
    # And the store agrees with the pure core run on the plain event list.
    from worker.eventlog import to_logged

    pure = evaluate([to_logged(e) for e in events], P, NOW, grace_from_task=task)
    assert pure.state.value == once["state"]
    assert [d.to_json() for d in pure.decisions][-MAX_DECISIONS_KEPT:] == once["decisions"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(event_st, min_size=0, max_size=30),
    where=st.integers(0, 60 * 24 * 40),
    channel=st.sampled_from(["email", "phone", "all"]),
)
def test_do_not_contact_anywhere_suppresses_with_no_contact_action(
    raw: list[tuple[int, int]], where: int, channel: str
) -> None:
    events = build(raw)
    dnc = Event("dnc", EventType.DO_NOT_CONTACT, Crm.HUBSPOT, "P", at(0) + where * 60_000, {"channels": [channel]})
    random.Random(where).shuffle(events)
    store = LeadStore(fakeredis.FakeRedis())
    store.apply_batch([*events, dnc], Decider(P, NOW))
    state = store.state("hubspot", "P")
    assert state is not None and state["state"] == "SUPPRESSED"
    kinds = [ActionKind(a["kind"]) for a in store.actions()]
    assert not CONTACT_ACTIONS & set(kinds)
    assert kinds.count(ActionKind.SUPPRESS) == 1
