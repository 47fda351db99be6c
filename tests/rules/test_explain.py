"""Decisions said as sentences (`rules.explain`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import fakeredis
import pytest

import worker.cli
from rules.events import Crm, Event, EventType
from rules.explain import plural, progress, sentence
from rules.lifecycle import evaluate
from tests.rules_helpers import History, at
from worker.cli import main
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.store import LeadStore

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


def test_explain_counts_in_the_episode_the_engine_counts_in(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #13: not interested; two follow-up reschedules (BREAKUP_DUE); a reply (ACTIVE); not interested."""
    conn = fakeredis.FakeRedis()
    story = [
        ("not_interested", 0, {}),
        ("meeting_rescheduled", 1, {}),
        ("meeting_rescheduled", 2, {}),
        ("email_replied", 3, {}),
        ("not_interested", 4, {}),
    ]
    events = [Event(f"x{i}", EventType(t), Crm.HUBSPOT, "X", at(day), d) for i, (t, day, d) in enumerate(story)]
    store = LeadStore(conn)
    for ev in events:  # one webhook at a time, as they happened: each continues the checkpoint
        store.apply_batch([ev], Decider(P, ev.occurred_ms))
    for var in ("PRUNER_POLICY", "REDIS_URL", "PRUNER_SUPPRESSION_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(worker.cli, "connect", lambda url, timeout=None: conn)
    assert main(["explain", "hubspot", "X"]) == 0
    out = capsys.readouterr().out
    assert "hubspot lead X is ACTIVE; 5 events" in out
    assert "repeated_no: not interested 1 of 2 in this episode" in out
    assert "pushed_back: 0 of 2 follow-up meeting reschedules in this episode" in out
    assert main(["explain", "hubspot", "X", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counters"]["not_interested"] == 2  # the lifetime count is still shown as a counter
    assert doc["progress"]["repeated_no"] == {"count": 1, "threshold": 2}


def test_explain_reads_thresholds_after_the_deal_size_multiplier_and_quiet_days() -> None:
    # A big deal (x2 silence threshold) and follow-ups on 25 Dec (a quiet day): as the rules count.
    h = History().add("deal_updated", at(0), amount=500_000)
    h.touches(3, at(1))
    christmas = int(datetime(2026, 12, 25, 10, tzinfo=UTC).timestamp() * 1000)
    h.touches(2, christmas)
    ev = evaluate(h.events, P, christmas + 86_400_000)
    lines = progress(ev.progress)
    need = round(P.param("unresponsive", "min_follow_ups") * P.tier(500_000).multiplier)
    assert need > P.param("unresponsive", "min_follow_ups")
    assert lines[0].startswith(f"unresponsive: 2 of {need} follow-ups since the last reply (2 more fell on quiet days")
