"""WON: a customer is never marked lost, nothing is sent for it, and a new open deal or a reopen brings it back."""

from __future__ import annotations

import pytest

from rules.errors import PolicyError
from rules.lifecycle import evaluate
from rules.policy import parse_policy
from rules.states import State
from tests.rules_helpers import History, at
from worker.policyfile import default_policy

P = default_policy()


def run(h: History, now: int | None = None, policy=P):  # type: ignore[no-untyped-def]
    return evaluate(h.events, policy, now if now is not None else at(120))


def test_a_won_deal_then_fourteen_unanswered_emails_stays_won() -> None:
    h = History().add("deal_updated", at(0), deal_id="d1", stage="closedwon")
    h.touches(14, at(1), step_ms=86_400_000)  # the case of the issue: LOST (no_response) before WON existed
    result = run(h)
    assert result.state is State.WON and result.loss_reason is None
    assert [(d.rule, d.to) for d in result.decisions] == [("deal_won", State.WON)]
    assert result.decisions[0].inputs == {"deal_id": "d1", "stage": "closedwon"}
    assert result.next_due_ms is None  # no timer: nothing will ever fire on its own


def test_no_rule_fires_for_a_customer_even_an_explicit_no() -> None:
    h = History().add("lead_profile", at(0), converted=True)
    h.add("not_interested", at(1)).add("not_interested", at(2))
    h.add("meeting_rescheduled", at(3)).add("meeting_rescheduled", at(4)).add("time_logged", at(5), minutes=5000)
    result = run(h)
    assert result.state is State.WON and [d.rule for d in result.decisions] == ["converted"]


@pytest.mark.parametrize(
    "won",
    [{"stage": "Closed Won"}, {"stage": " CLOSEDWON "}, {"stage": "Negotiation", "won": True}],
    ids=["salesforce-stage", "case-and-space", "salesforce-IsWon"],
)
def test_won_is_read_from_the_stage_or_the_crms_own_flag(won: dict[str, object]) -> None:
    h = History().add("deal_updated", at(0), deal_id="006A", **won)
    assert run(h).state is State.WON


def test_a_won_lead_that_was_lost_becomes_won_and_never_goes_back_to_lost() -> None:
    h = History().add("not_interested", at(0)).add("not_interested", at(1))  # LOST
    h.add("deal_updated", at(10), deal_id="d1", stage="closedwon")
    result = run(h, at(400))  # long past the re-engage time of the loss
    assert result.state is State.WON
    assert [d.to for d in result.decisions] == [State.LOST, State.WON]


def test_a_new_open_deal_brings_a_customer_back_to_active_and_the_rules_count_afresh() -> None:
    h = History().add("not_interested", at(0))
    h.add("deal_updated", at(1), deal_id="d1", stage="closedwon")
    h.add("not_interested", at(2))  # while WON: counted, fires nothing
    h.add("deal_updated", at(3), deal_id="d2", stage="appointmentscheduled")  # upsell opened
    result = run(h)
    assert result.state is State.ACTIVE
    assert [d.rule for d in result.decisions] == ["deal_won", "deal_opened"]
    h.add("not_interested", at(4))  # one no in the new episode: not two
    assert run(h).state is State.ACTIVE
    h.add("not_interested", at(5))
    assert run(h).state is State.LOST


def test_editing_an_open_deal_the_customer_already_had_does_not_reopen() -> None:
    h = History().add("deal_updated", at(0), deal_id="d2", stage="appointmentscheduled")
    h.add("deal_updated", at(1), deal_id="d1", stage="closedwon")
    h.add("deal_updated", at(2), deal_id="d2", stage="appointmentscheduled", amount=9_000)  # an edit
    h.add("deal_updated", at(3), deal_id="d3", stage="closedlost")  # a lost upsell: still a customer
    assert run(h).state is State.WON


def test_a_reopened_won_deal_or_a_reps_reopen_brings_it_back_but_a_reply_does_not() -> None:
    won = History().add("deal_updated", at(0), deal_id="d1", stage="closedwon")
    won.add("email_replied", at(1))
    assert run(won).state is State.WON
    reopened = History().add("deal_updated", at(0), deal_id="d1", stage="closedwon")
    reopened.add("deal_updated", at(1), deal_id="d1", stage="contractsent")
    assert run(reopened).state is State.ACTIVE
    by_rep = History().add("lead_profile", at(0), converted=True).add("reopened", at(1))
    result = run(by_rep)
    assert result.state is State.ACTIVE and result.decisions[-1].rule == "reopened"


def test_do_not_contact_still_wins_over_won_in_either_order() -> None:
    a = History().add("deal_updated", at(0), deal_id="d1", stage="closedwon").add("do_not_contact", at(1))
    b = History().add("do_not_contact", at(0)).add("deal_updated", at(1), deal_id="d1", stage="closedwon")
    assert run(a).state is State.SUPPRESSED and run(b).state is State.SUPPRESSED


def test_won_stages_are_the_policys() -> None:
    custom = parse_policy('outcomes: {won_stages: ["1234567"], lost_stages: ["7654321"]}', P)
    h = History().add("deal_updated", at(0), deal_id="d1", stage="1234567")
    assert run(h, policy=custom).state is State.WON
    assert run(h).state is State.ACTIVE  # "1234567" is an open stage under the default policy
    with pytest.raises(PolicyError, match="cannot be both won and lost"):
        parse_policy('outcomes: {won_stages: ["x"], lost_stages: ["X"]}', P)
    with pytest.raises(PolicyError, match="outcomes.won_stages"):
        parse_policy("outcomes: {won_stages: closedwon}", P)


# -- the worker side: drain, analytics, simulate ----------------------------------------------

STATE_AT = at(10)


def won_and_converted_store():  # type: ignore[no-untyped-def]
    import fakeredis

    from rules.events import Crm, Event, EventType
    from worker.decide import Decider
    from worker.store import LeadStore

    store = LeadStore(fakeredis.FakeRedis())
    events = [
        Event("w1", EventType.DEAL_UPDATED, Crm.HUBSPOT, "won-1", at(0), {"deal_id": "d", "stage": "closedwon"}),
        Event("c1", EventType.LEAD_PROFILE, Crm.SALESFORCE, "00Q000000000001", at(0), {"converted": True}),
        *(Event(f"n{k}", EventType.NOT_INTERESTED, Crm.HUBSPOT, "lost-1", at(k), {}) for k in (1, 2)),
    ]
    store.apply_batch(events, Decider(P, STATE_AT))
    return store


def test_won_leads_count_as_conversions_in_the_stats_and_the_lead_list() -> None:
    from worker import leadquery
    from worker.leadquery import Filters
    from worker.stats import collect

    store = won_and_converted_store()
    assert leadquery.counts(store.redis, "outcome") == {"won": 2, "lost": 1}
    listed = leadquery.page(store.redis, Filters(state="WON"), 10)
    assert sorted(row.lead_id for row in listed.rows) == ["00Q000000000001", "won-1"]
    assert collect(store.redis).to_json()["outcomes"] == {"won": 2, "lost": 1}


def test_simulate_shows_won(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.helpers import event
    from tests.rules_helpers import T0
    from worker.simulate import simulate_file

    lines = [event("deal_updated", "s1", at=T0, data={"deal_id": "d", "stage": "closedwon"})]
    lines += [event("email_sent", "s1", at=T0.replace(day=3 + i)) for i in range(14)]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = simulate_file(str(path), P)
    assert report.final_states == {"WON": 1}
    assert report.decisions_by_rule == {"deal_won": 1}
