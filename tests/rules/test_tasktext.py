"""What a rep reads on a task: which rule fired, why, and what to do (rules/tasktext.py, worker/tasktexts.py)."""

from __future__ import annotations

import json

import fakeredis
import pytest

from rules.tasktext import task_text, why
from worker.keys import state_key
from worker.tasktexts import TaskTexts


@pytest.mark.parametrize(
    ("rule", "inputs", "said"),
    [
        (
            "unresponsive",
            {"follow_ups_since_reply": 3, "threshold": 3},
            "3 follow-ups since their last reply, none answered",
        ),
        ("unresponsive", {"follow_ups_since_reply": 1}, "1 follow-up since their last reply, none answered"),
        ("pushed_back", {"follow_up_reschedules": 2, "threshold": 2}, "follow-up meetings pushed back 2 times"),
        (
            "effort_exceeds_value",
            {"minutes_invested": 500, "typical_minutes": 120.0, "factor": 4},
            "500 minutes spent on a deal that usually takes about 120",
        ),
        ("repeated_no", {"not_interested": 2}, "they said they are not interested 2 times"),
        (
            "proposal_expired",
            {"expired_at": "2026-03-01T00:00:00Z", "days_threshold": 28},
            "the proposal expired on 2026-03-01 and nobody answered since",
        ),
        ("call_cadence_exhausted", {"weeks_at_cadence": 4}, "4 weeks of calls without reaching them"),
        ("breakup_grace", {"business_days": 7}, "no reply in 7 business days after the break-up"),
        ("decisive_no", {"category": "budget"}, "a decision maker said no"),
        # Inputs missing or of another shape (an older state record): the loss reason, said plainly.
        ("unresponsive", {}, "no response after many follow-ups"),
        ("unresponsive", {"follow_ups_since_reply": "3"}, "no response after many follow-ups"),
        ("a_portal_rule", {"x": 1}, "no response after many follow-ups"),
    ],
)
def test_why_a_rule_fired_in_the_reps_words(rule: str, inputs: dict[str, object], said: str) -> None:
    assert why(rule, "no_response", inputs) == said


def test_a_breakup_task_names_the_rule_and_carries_the_polite_guidance() -> None:
    text = task_text("breakup_task", "unresponsive", "no_response", {"follow_ups_since_reply": 3})
    assert text.subject == "Send a polite break-up message: 3 follow-ups since their last reply, none answered"
    body = text.body
    assert body.startswith("Pruner's unresponsive rule fired: 3 follow-ups since their last reply, none answered.")
    for guidance in ("thanks them for their time", "stopping your follow-ups", "leaves the door open",
                     "one last piece of value"):  # fmt: skip
        assert guidance in body


def test_a_check_in_says_why_the_lead_was_lost_and_stays_light() -> None:
    loss = {"rule": "pushed_back", "to": "LOST", "inputs": {"follow_up_reschedules": 3}}
    text = task_text("reengage_task", "reengage", "deprioritized", {"after_days": 120}, months_since_loss=4, loss=loss)
    assert text.subject == "Check in: lost 4 months ago (follow-up meetings pushed back 3 times)"
    assert "light, friendly check-in" in text.body and "No hard sell" in text.body
    plain = task_text("reengage_task", "reengage", "not_interested", None, months_since_loss=1)
    assert plain.subject == "Check in: lost 1 month ago (they said they are not interested)"


def test_other_kinds_have_no_task_text() -> None:
    with pytest.raises(ValueError, match="mark_lost"):
        task_text("mark_lost", "repeated_no", "not_interested")


def test_the_decision_behind_an_action_is_read_from_the_leads_state_record() -> None:
    conn = fakeredis.FakeRedis()
    decisions = [
        {"rule": "unresponsive", "to": "BREAKUP_DUE", "reason": "no_response", "at": "2026-01-10T10:00:00Z",
         "inputs": {"follow_ups_since_reply": 4}},
        {"rule": "breakup_grace", "to": "LOST", "reason": "no_response", "at": "2026-01-21T10:00:00Z",
         "inputs": {"business_days": 7}},
        {"rule": "reengage", "to": "REENGAGE_DUE", "reason": "no_response", "at": "2026-05-21T10:00:00Z",
         "inputs": {"lost_since": "2026-01-21T10:00:00Z", "after_days": 120}},
    ]  # fmt: skip
    conn.set(state_key("hubspot", "7"), json.dumps({"state": "REENGAGE_DUE", "decisions": decisions}))
    base = {"crm": "hubspot", "lead_id": "7", "reason": "no_response"}
    breakup = {**base, "id": "b", "kind": "breakup_task", "rule": "unresponsive", "at": "2026-01-10T10:00:00Z"}
    check_in = {**base, "id": "c", "kind": "reengage_task", "rule": "reengage", "at": "2026-05-21T10:00:00Z"}
    unknown = {**base, "id": "u", "kind": "breakup_task", "rule": "unresponsive", "lead_id": "8", "at": "x"}
    texts = TaskTexts(conn, default_months=9)([breakup, check_in, unknown])
    assert texts["b"].subject.endswith(": 4 follow-ups since their last reply, none answered")
    assert texts["c"].subject == "Check in: lost 4 months ago (no reply in 7 business days after the break-up)"
    assert texts["u"].subject.endswith(": no response after many follow-ups")  # no record: the reason alone
