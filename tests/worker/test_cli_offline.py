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
        # What `pruner check` (the release phase) accepts, the worker must be able to evaluate:
        ("reengage:\n  after_days: 100000000\n", "reengage.after_days must be an integer between 1 and 3650"),
        ("rules:\n  proposal_expired:\n    days_after_expiry: 4000\n", "days_after_expiry must be an integer between"),
        ("rules:\n  breakup_grace:\n    business_days: 1000000\n", "rules.breakup_grace.business_days must be"),
        ("rules:\n  effort_exceeds_value:\n    factor: .inf\n", "rules.effort_exceeds_value.factor must be a finite"),
        ("rules:\n  effort_exceeds_value:\n    factor: .nan\n", "rules.effort_exceeds_value.factor must be a finite"),
        ("rules:\n  unresponsive:\n    min_follow_ups: 10000000\n", "rules.unresponsive.min_follow_ups must be"),
        ("rules:\n  call_cadence_exhausted:\n    weeks: 100000\n", "rules.call_cadence_exhausted.weeks must be"),
        ("guardrails:\n  min_touches_for_silence: 100000000\n", "guardrails.min_touches_for_silence must be"),
        (
            "guardrails:\n  deal_size_tiers: [{min_amount: 0, multiplier: .inf, typical_minutes: 10}]\n",
            "guardrails.deal_size_tiers[0].multiplier must be a finite number between 1 and 10, got inf",
        ),
        (
            "guardrails:\n  deal_size_tiers: [{min_amount: 0, multiplier: 1000, typical_minutes: 10}]\n",
            "guardrails.deal_size_tiers[0].multiplier must be a finite number between 1 and 10",
        ),
        (
            "guardrails:\n  deal_size_tiers: [{min_amount: .inf, multiplier: 1, typical_minutes: 10}]\n",
            "guardrails.deal_size_tiers[0].min_amount must be a finite number",
        ),
        (
            "guardrails:\n  deal_size_tiers: [{min_amount: 0, multiplier: 1, typical_minutes: 100000000}]\n",
            "guardrails.deal_size_tiers[0].typical_minutes must be",
        ),
        ("guardrails:\n  quiet_periods: [{from: '02-30', to: '03-01'}]\n", 'quiet_periods[0].from must be "MM-DD"'),
        ("guardrails:\n  quiet_periods: [{from: '01-02', to: '01-01'}]\n", "guardrails.quiet_periods leave"),
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


BOUNDS = """\
rules:
  repeated_no: {min_not_interested: 1000}
  pushed_back: {min_follow_up_reschedules: 1000}
  unresponsive: {min_follow_ups: 1}
  effort_exceeds_value: {factor: 1000}
  proposal_expired: {days_after_expiry: 3650}
  call_cadence_exhausted: {min_attempts_per_week: 1, weeks: 520}
  breakup_grace: {business_days: 3650}
guardrails:
  min_touches_for_silence: 0
  quiet_periods: [{from: "06-01", to: "12-17"}]  # 200 days
  deal_size_tiers: [{min_amount: 0, multiplier: 10, typical_minutes: 525600}]
reengage: {after_days: 3650}
"""


def test_a_policy_at_its_bounds_runs_in_the_worker_and_the_simulator(tmp_path: Path) -> None:
    import fakeredis

    from rules.events import parse_event
    from worker.decide import Decider
    from worker.policyfile import load_policy
    from worker.simulate import simulate
    from worker.store import LeadStore

    path = tmp_path / "bounds.yaml"
    path.write_text(BOUNDS)
    policy = load_policy(str(path))
    raw = [
        event("deal_updated", lead_id="big", at=T0, event_id="d", data={"amount": 10**9}),
        event("proposal_sent", lead_id="big", at=T0, event_id="p", data={"expires_at": "2026-02-01T00:00:00Z"}),
        *(event("email_sent", lead_id="big", at=T0, event_id=f"s{i}", data={"follow_up": True}) for i in range(30)),
        event("decision_no", lead_id="lost", at=T0, event_id="n", data={"reason": "budget"}),
    ]
    events = [parse_event(x, "x", 2**62) for x in raw]
    store = LeadStore(fakeredis.FakeRedis())
    store.apply_batch(events, Decider(policy, int(T0.timestamp() * 1000) + 86_400_000))
    assert store.state("hubspot", "lost")["state"] == "LOST"
    report = simulate(iter(events), policy, int(T0.timestamp() * 1000) + 40 * 365 * 86_400_000)
    assert report.leads == 2


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PRUNER_POLICY", "PRUNER_WEBHOOK_SECRET", "REDIS_URL", "PRUNER_SUPPRESSION_KEY", "PORT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/7?password=hunter2", "redis://127.0.0.1:6379/7"),
        ("redis://default:hunter2@127.0.0.1:6379/7", "redis://127.0.0.1:6379/7"),
    ],
)
def test_check_never_prints_the_redis_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("REDIS_URL", url)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert f"configuration OK (redis {shown})" in out and "hunter2" not in out


def test_check_refuses_a_bad_redis_url_with_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@localhost:notaport/0")
    with pytest.raises(SystemExit) as exit_info:
        main(["check"])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "REDIS_URL" in err and "hunter2" not in err


def test_simulate_uses_pruner_policy_like_the_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = tmp_path / "events.jsonl"
    write_history(history)
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  repeated_no:\n    min_not_interested: 3\n")
    clean_env(monkeypatch)
    monkeypatch.setenv("PRUNER_POLICY", str(policy))
    assert main(["simulate", str(history), "--now", "2026-04-01T00:00:00Z", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "repeated_no" not in report["decisions_by_rule"]
    assert report["leads_final"]["hubspot:no"]["state"] == "ACTIVE"
    # --policy still wins over the environment
    monkeypatch.setenv("PRUNER_POLICY", str(tmp_path / "missing.yaml"))
    assert main(["simulate", str(history), "--policy", str(policy)]) == 0


def test_simulate_refuses_a_bad_pruner_policy_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    history = tmp_path / "events.jsonl"
    write_history(history)
    clean_env(monkeypatch)
    monkeypatch.setenv("PRUNER_POLICY", str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", str(history)])
    assert exit_info.value.code == 3
    assert "missing.yaml cannot be read" in capsys.readouterr().err


def test_check_refuses_a_policy_that_is_not_utf8_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "binary.yaml"
    policy.write_bytes(b"rules:\n  repeated_no: {enabled: false}  # caf\xe9\n")
    clean_env(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--policy", str(policy)])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "binary.yaml is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["sweep"], ["stats"], ["replay", "--failed"], ["explain", "hubspot", "1"]])
def test_redis_down_is_one_sentence_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/7")  # nothing listens on port 1
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("pruner: Redis at redis://127.0.0.1:1/7 did not answer") and len(err.splitlines()) == 1
    assert "hunter2" not in err


def test_dev_refuses_a_bad_port_before_starting_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pruner dev started a process")

    clean_env(monkeypatch)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.setenv("PORT", "abc")
    assert main(["dev"]) == 3
    assert "PORT must be an integer, got 'abc'" in capsys.readouterr().err


def test_dev_never_prints_the_redis_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess

    from worker import dev

    class Exited:
        returncode = 0

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    clean_env(monkeypatch)
    monkeypatch.setattr(subprocess, "Popen", Exited)
    monkeypatch.setattr(dev, "_wait_for", lambda *args, **kwargs: None)
    monkeypatch.setenv("REDIS_URL", "redis://default:hunter2@127.0.0.1:6379/7?password=hunter2")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["dev"]) == 1  # the fake processes "exit" at once
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert "(Redis: redis://127.0.0.1:6379/7)" in out and "hunter2" not in out


def test_explain_json_for_an_erased_lead_is_the_erased_document(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fakeredis

    import worker.cli
    from rules.events import parse_event
    from worker.decide import Decider
    from worker.policyfile import default_policy
    from worker.store import LeadStore

    key = "k" * 32
    conn = fakeredis.FakeRedis()
    erasure = parse_event(event("erasure_requested", lead_id="E1", at=T0, event_id="x"), "x", 2**62)
    LeadStore(conn, key.encode()).apply_batch(
        [erasure], Decider(default_policy(), erasure.occurred_ms, suppression_key=key.encode())
    )
    clean_env(monkeypatch)
    monkeypatch.setenv("PRUNER_SUPPRESSION_KEY", key)
    monkeypatch.setattr(worker.cli, "connect", lambda url, timeout=None: conn)
    assert main(["explain", "hubspot", "E1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"crm": "hubspot", "lead_id": "E1", "state": "SUPPRESSED", "erased": True}
    assert main(["explain", "hubspot", "E1"]) == 0
    assert "was erased on request" in capsys.readouterr().out


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    history = tmp_path / "many.jsonl"
    lines = [json.dumps(event("lead_profile", lead_id=f"lead-{i:05d}", at=T0, event_id=f"p{i}")) for i in range(4000)]
    history.write_text("\n".join(lines) + "\n")
    # `pruner simulate ... --format json | head -c 10`: far more than a pipe buffer holds.
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "pruner"), "simulate", str(history), "--now", "2026-04-01T00:00:00Z"]
        + ["--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10).startswith(b"{")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) in (0, 1)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_subcommand_help_has_a_description_an_example_and_its_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker.cli import HELP

    for name in HELP:
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])  # "hubspot subscribe" is a command of a group
        out = capsys.readouterr().out
        assert "examples:\n  pruner " + name in out and "environment:\n  " in out, name
        assert len(out.split("\n\n")[1]) > 60, f"{name} --help has no description"
