"""Decisions said as sentences (`rules.explain`)."""

from __future__ import annotations

from rules.explain import plural, sentence
from rules.lifecycle import evaluate
from tests.rules_helpers import History, at
from worker.policyfile import default_policy

P = default_policy()


def test_a_widened_suppression_is_explained_with_its_channels() -> None:
    h = History().add("do_not_contact", at(0), channels=["email"]).add("do_not_contact", at(3), channels=["phone"])
    said = [sentence(d.to_json()) for d in evaluate(h.events, P, at(4)).decisions]
    assert said == [
        "2026-03-02T10:00:00Z: SUPPRESSED because the lead asked not to be contacted (channels: email)",
        "2026-03-05T10:00:00Z: SUPPRESSED because the lead also asked not to be contacted by phone "
        "(channels now: email and phone)",
    ]


def test_a_break_up_reason_is_not_called_a_loss_reason() -> None:
    decision = {"rule": "unresponsive", "to": "BREAKUP_DUE", "reason": "no_response", "at": "T", "inputs": {}}
    assert sentence(decision).endswith("(break-up reason: no_response)")
    assert sentence({**decision, "to": "LOST", "rule": "breakup_grace"}).endswith("(loss reason: no_response)")


def test_effort_on_a_deal_without_an_amount_says_so() -> None:
    inputs = {"minutes_invested": 500, "threshold_minutes": 480, "factor": 4, "typical_minutes": 120}
    said = sentence({"rule": "effort_exceeds_value", "to": "BREAKUP_DUE", "at": "T", "inputs": inputs})
    assert "for a deal of unknown size" in said and "None" not in said
    said = sentence(
        {"rule": "effort_exceeds_value", "to": "BREAKUP_DUE", "at": "T", "inputs": {**inputs, "deal_amount": 5e4}}
    )
    assert "for a deal of 50000" in said


def test_counts_agree_with_their_nouns() -> None:
    assert (plural(1, "event"), plural(2, "event"), plural(0, "event")) == ("1 event", "2 events", "0 events")
