"""CLI commands that need no Redis: check (policy) and simulate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import event
from tests.rules_helpers import T0
from worker.cli import main


def write_history(path: Path) -> None:
    from datetime import timedelta

    lines = []
    for i in range(13):  # silent lead: BREAKUP_DUE, then LOST after grace
        lines.append(event("email_sent", lead_id="silent", at=T0 + timedelta(hours=i), event_id=f"s{i}"))
    lines.append(event("not_interested", lead_id="no", at=T0, event_id="n1"))
    lines.append(event("not_interested", lead_id="no", at=T0 + timedelta(days=1), event_id="n2"))
    lines.append(event("not_interested", lead_id="no", at=T0 + timedelta(days=1), event_id="n2"))  # duplicate
    lines.append(event("email_replied", lead_id="fine", at=T0, event_id="f1"))
    body = "\n".join(json.dumps(x) for x in lines) + "\n"
    body += (
        json.dumps(
            {
                "events": [
                    event("decision_no", lead_id="dm", at=T0, event_id="d1", data={"reason": "went with a competitor"})
                ]
            }
        )
        + "\n"
    )
    path.write_text(body)


def test_simulate_reports_rules_reasons_and_states(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "events.jsonl"
    write_history(history)
    assert main(["simulate", str(history), "--now", "2026-04-01T00:00:00Z", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 18 and report["duplicates"] == 1 and report["leads"] == 4
    assert report["decisions_by_rule"] == {"unresponsive": 1, "breakup_grace": 1, "repeated_no": 1, "decisive_no": 1}
    assert report["loss_reasons"] == {"no_response": 1, "not_interested": 1, "competitor": 1}
    assert report["leads_final"]["hubspot:silent"]["rules"] == ["unresponsive", "breakup_grace"]
    assert report["final_states"] == {"LOST": 3, "ACTIVE": 1}


def test_simulate_text_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "events.jsonl"
    write_history(history)
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  repeated_no:\n    min_not_interested: 3\n")
    assert main(["simulate", str(history), "--policy", str(policy), "--now", "2026-04-01T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "repeated_no" not in out.split("final states")[0]
    assert "hubspot:no" in out and "ACTIVE" in out


def test_simulate_names_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "events.jsonl"
    history.write_text(json.dumps(event()) + "\n" + json.dumps(event("time_logged", data={"minutes": 0})) + "\n")
    assert main(["simulate", str(history)]) == 2
    assert "line 2.data.minutes must be an integer > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  unresponsive:\n    min_folow_ups: 3\n", "rules.unresponsive.min_folow_ups is not a known key"),
        ("rules:\n  unresponsive:\n    min_follow_ups: -1\n", "rules.unresponsive.min_follow_ups must be an integer"),
        ("guardrails:\n  holiday_country: Atlantis\n", "guardrails.holiday_country must be a country code"),
        ("guardrails:\n  quiet_periods: [{from: '13-01', to: '01-02'}]\n", 'quiet_periods[0].from must be "MM-DD"'),
        ("colour: blue\n", "colour is not a known key"),
        ("rules: [\n", "is not valid YAML"),
    ],
)
def test_check_refuses_a_bad_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(text)
    monkeypatch.delenv("PRUNER_POLICY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--policy", str(policy)])
    assert exit_info.value.code == 3
    assert message in capsys.readouterr().err


def test_check_accepts_the_default(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRUNER_POLICY", "PRUNER_WEBHOOK_SECRET", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check"]) == 0
    assert "policy OK: bundled default" in capsys.readouterr().out


def test_sharded_simulation_equals_one_process(tmp_path: Path) -> None:
    from worker.policyfile import default_policy
    from worker.simulate import read_events, simulate, simulate_file

    history = tmp_path / "events.jsonl"
    write_history(history)
    with history.open() as stream:
        single = simulate(read_events(stream), default_policy())
    assert simulate_file(str(history), default_policy(), workers=3).to_json() == single.to_json()


def test_sharded_simulation_reports_the_first_bad_line(tmp_path: Path) -> None:
    from rules.errors import SchemaError
    from worker.policyfile import default_policy
    from worker.simulate import simulate_file

    history = tmp_path / "events.jsonl"
    lines = [json.dumps(event(lead_id=f"L{i}")) for i in range(20)]
    lines[7] = json.dumps(event("smoke_signal", lead_id="L7"))
    lines[15] = "{oops"
    history.write_text("\n".join(lines) + "\n")
    with pytest.raises(SchemaError, match=r"line 8.type must be one of the canonical types"):
        simulate_file(str(history), default_policy(), workers=2)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HUBSPOT_RATE_LIMIT", "fast", "HUBSPOT_RATE_LIMIT"),
        ("SALESFORCE_RATE_LIMIT", "10/0", "SALESFORCE_RATE_LIMIT"),
        ("SALESFORCE_LOST_REASON_FIELD", "Reason'; DROP", "lost_reason_field"),
        ("SALESFORCE_MAPPING", "{nope", "SALESFORCE_MAPPING must be a JSON object"),
    ],
)
def test_check_refuses_bad_crm_settings_before_any_callback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    # A typo in a CRM setting must stop the deploy (`pruner check` is the release phase), not the first drain.
    for var in ("PRUNER_POLICY", "PRUNER_WEBHOOK_SECRET", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["check"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
