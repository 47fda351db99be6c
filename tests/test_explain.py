"""Decisions said as sentences (`rules.explain`)."""

from __future__ import annotations

from rules.explain import sentence
from rules.lifecycle import evaluate
from tests.rules_helpers import History, at
from worker.policyfile import default_policy

P = default_policy()


def test_a_widened_suppression_is_explained_with_its_channels() -> None:
    h = History().add("do_not_contact", at(0), channels=["email"]).add("do_not_contact", at(3), channels=["phone"])
    said = [sentence(d.to_json()) for d in evaluate(h.events, P, at(4)).decisions]
    assert said == [
        "2026-03-02T10:00:00Z: SUPPRESSED because the lead asked not to be contacted (channels: ['email'])",
        "2026-03-05T10:00:00Z: SUPPRESSED because the lead also asked not to be contacted by ['phone'] "
        "(channels now: ['email', 'phone'])",
    ]
