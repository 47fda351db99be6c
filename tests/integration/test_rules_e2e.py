"""Every rule and guardrail of docs/lifecycle.md, through real HTTP, a real RQ worker and `pruner sweep`."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import event, iso, redis_url_for_tests
from tests.integration.support import (
    BIN,
    REDIS_URL,
    ROOT,
    base_env,
    drained,
    get_lead,
    loud_day,
    send,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from worker.store import LeadStore

pytestmark = pytest.mark.integration
NOW = datetime.now(tz=UTC)


def _loud_day(days_ago: int, span: int) -> datetime:
    # Recent, because a LOST lead older than 120 days is (rightly) already REENGAGE_DUE.
    return loud_day(NOW, days_ago, span)


BASE = _loud_day(20, 4)
# Within the last days: a lead made BREAKUP_DUE here is still inside its 7-business-day grace.
RECENT = _loud_day(1, 1)


class System:
    def __init__(self, url: str, conn: redis.Redis, redis_url: str) -> None:
        self.url, self.conn, self.redis_url = url, conn, redis_url

    def send(self, events: list[dict[str, Any]]) -> None:
        response = send(self.url, events)
        assert response.status_code == 202, response.text
        wait_until(drained(self.conn))

    def lead(self, lead_id: str) -> dict[str, Any]:
        response = get_lead(self.url, lead_id)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def actions(self, lead_id: str) -> list[str]:
        return [a["kind"] for a in LeadStore(self.conn).actions() if a["lead_id"] == lead_id]

    def sweep(self, now: datetime, commit: bool = True) -> str:
        result = subprocess.run(
            [str(BIN / "pruner"), "sweep", "--now", iso(now), *(["--commit-future"] if commit else [])],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=base_env(REDIS_URL=self.redis_url),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    web, url = start_web(base_env())
    worker = start_worker()
    try:
        wait_http(f"{url}/healthz")
        yield System(url, conn, REDIS_URL)
    finally:
        stop(web)
        stop(worker)
        conn.flushdb()


def lead_id() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


def ev(etype: str, lead: str, when: datetime, **data: Any) -> dict[str, Any]:
    return event(etype, lead_id=lead, at=when, data=data or None)


def touches(lead: str, n: int, start: datetime, etype: str = "email_sent") -> list[dict[str, Any]]:
    return [ev(etype, lead, start + timedelta(hours=i)) for i in range(n)]


def last(doc: dict[str, Any]) -> tuple[str, str, str | None]:
    d = doc["decisions"][-1]
    return d["rule"], d["to"], d["reason"]


def test_repeated_no(system: System) -> None:
    lead = lead_id()
    system.send([ev("not_interested", lead, BASE), ev("not_interested", lead, BASE + timedelta(days=2))])
    doc = system.lead(lead)
    assert (doc["state"], doc["loss_reason"]) == ("LOST", "not_interested")
    assert doc["decisions"][-1]["inputs"] == {"not_interested": 2, "threshold": 2}
    assert system.actions(lead) == ["mark_lost"]
    explained = subprocess.run(
        [str(BIN / "pruner"), "explain", "hubspot", lead],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(),
    )
    assert explained.returncode == 0, explained.stderr
    assert f"hubspot lead {lead} is LOST (loss reason: not_interested)" in explained.stdout
    assert "LOST because the lead said not interested 2 times (threshold 2)" in explained.stdout


def test_decisive_no(system: System) -> None:
    lead = lead_id()
    system.send([ev("decision_no", lead, BASE, reason="Too expensive for this year's budget")])
    assert last(system.lead(lead)) == ("decisive_no", "LOST", "budget")


def test_pushed_back(system: System) -> None:
    lead = lead_id()
    system.send([ev("meeting_rescheduled", lead, BASE + timedelta(days=d), first_meeting=(d == 0)) for d in range(3)])
    assert last(system.lead(lead)) == ("pushed_back", "BREAKUP_DUE", "deprioritized")
    assert system.actions(lead) == ["breakup_task"]


def test_unresponsive_needs_13_touches(system: System) -> None:
    lead = lead_id()
    system.send(touches(lead, 12, RECENT))
    assert system.lead(lead)["state"] == "ACTIVE"
    system.send(touches(lead, 1, RECENT + timedelta(hours=13)))
    doc = system.lead(lead)
    assert last(doc) == ("unresponsive", "BREAKUP_DUE", "no_response")
    assert doc["decisions"][-1]["inputs"]["outbound_touches"] == 13


def test_effort_exceeds_value(system: System) -> None:
    lead = lead_id()
    system.send(
        [ev("time_logged", lead, BASE, minutes=500), ev("time_logged", lead, BASE + timedelta(days=1), minutes=300)]
    )
    assert last(system.lead(lead)) == ("effort_exceeds_value", "BREAKUP_DUE", "effort_exceeds_value")


def test_breakup_grace_then_reengage_by_sweep(system: System) -> None:
    lead = lead_id()
    start = _loud_day(2, 1)  # (calls on Dec 24 - Jan 1 would not count as silence)
    system.send(touches(lead, 13, start, "call_attempted"))
    doc = system.lead(lead)
    assert doc["state"] == "BREAKUP_DUE" and doc["next_due"] is not None
    system.sweep(NOW + timedelta(days=3))  # grace not over: 7 business days
    assert system.lead(lead)["state"] == "BREAKUP_DUE"
    # A future --now without --commit-future only says what would happen.
    out = system.sweep(NOW + timedelta(days=20), commit=False)
    assert "dry run" in out and f"hubspot {lead}: LOST by breakup_grace (no_response); 1 CRM action" in out
    assert system.lead(lead)["state"] == "BREAKUP_DUE" and system.actions(lead) == ["breakup_task"]
    out = system.sweep(NOW + timedelta(days=20))
    assert "due leads evaluated" in out
    doc = system.lead(lead)
    assert (doc["state"], doc["loss_reason"], last(doc)[0]) == ("LOST", "no_response", "breakup_grace")
    system.sweep(NOW + timedelta(days=20 + 121))
    doc = system.lead(lead)
    assert (doc["state"], last(doc)[0]) == ("REENGAGE_DUE", "reengage")
    assert system.actions(lead) == ["breakup_task", "mark_lost", "reengage_task"]


def test_proposal_expired_by_sweep(system: System) -> None:
    lead = lead_id()
    start = NOW - timedelta(days=3)
    events = touches(lead, 13, start) + [ev("email_replied", lead, start + timedelta(days=1))]
    events.append(ev("proposal_sent", lead, start + timedelta(days=2), expires_at=iso(NOW - timedelta(hours=1))))
    system.send(events)
    assert system.lead(lead)["state"] == "ACTIVE"
    system.sweep(NOW + timedelta(days=45))  # 28 days after expiry, not counting quiet days
    doc = system.lead(lead)
    assert (doc["state"], doc["loss_reason"]) == ("LOST", "proposal_expired")


def test_reply_resets_breakup(system: System) -> None:
    lead = lead_id()
    system.send(touches(lead, 13, BASE))
    system.send([ev("email_replied", lead, BASE + timedelta(days=1))])
    doc = system.lead(lead)
    assert doc["state"] == "ACTIVE" and last(doc)[0] == "reply_resets"


def test_quiet_period_is_not_silence(system: System) -> None:
    lead = lead_id()
    nov = datetime(2025, 11, 10, 10, tzinfo=UTC)
    events = touches(lead, 12, nov) + [ev("email_replied", lead, nov + timedelta(days=1))]
    events += [ev("email_sent", lead, datetime(2025, 12, d, 10, tzinfo=UTC)) for d in (24, 26, 29, 31)]
    system.send(events)
    assert system.lead(lead)["state"] == "ACTIVE"
    assert system.lead(lead)["counters"]["follow_ups_since_reply"] == 4  # counted, but not as silence


def test_bigger_deal_gets_more_time(system: System) -> None:
    lead = lead_id()
    events = [ev("deal_updated", lead, BASE, amount=75_000, stage="proposal")]
    events += touches(lead, 8, BASE + timedelta(hours=1)) + [ev("email_replied", lead, BASE + timedelta(days=1))]
    events += touches(lead, 5, BASE + timedelta(days=2))
    system.send(events)
    assert system.lead(lead)["state"] == "ACTIVE"  # 5 follow-ups < 3 x 2


def test_lost_beats_breakup(system: System) -> None:
    lead = lead_id()
    events = touches(lead, 13, BASE)[:12] + [ev("not_interested", lead, BASE + timedelta(days=1))]
    t = BASE + timedelta(days=2)
    events += [ev("not_interested", lead, t), ev("email_sent", lead, t)]
    system.send(events)
    doc = system.lead(lead)
    assert doc["state"] == "LOST" and "unresponsive" not in [d["rule"] for d in doc["decisions"]]


def test_do_not_contact_in_the_same_batch_issues_no_contact_action(system: System) -> None:
    lead = lead_id()
    events = touches(lead, 13, BASE) + [ev("do_not_contact", lead, BASE + timedelta(days=1), channels=["email"])]
    system.send(events)
    doc = system.lead(lead)
    assert doc["state"] == "SUPPRESSED"
    assert system.actions(lead) == ["suppress"]
    system.sweep(NOW + timedelta(days=400))
    assert system.lead(lead)["state"] == "SUPPRESSED"
    system.send([ev("email_replied", lead, BASE + timedelta(days=2)), ev("reopened", lead, BASE + timedelta(days=3))])
    assert system.lead(lead)["state"] == "SUPPRESSED"
    assert system.actions(lead) == ["suppress"]


def test_do_not_contact_that_arrives_late_still_wins(system: System) -> None:
    lead = lead_id()
    system.send(touches(lead, 13, BASE + timedelta(days=1)))
    system.send([ev("do_not_contact", lead, BASE)])  # happened first, arrived last
    doc = system.lead(lead)
    assert doc["state"] == "SUPPRESSED"
    assert [d["rule"] for d in doc["decisions"]] == ["do_not_contact"]
    assert system.actions(lead)[-1] == "suppress"


def test_call_cadence_exhausted_with_a_call_led_policy(tmp_path: Path) -> None:
    policy = tmp_path / "calls.yaml"
    policy.write_text("rules:\n  unresponsive:\n    enabled: false\n")
    url14 = redis_url_for_tests(14)
    conn = redis.Redis.from_url(url14)
    conn.flushdb()
    env = base_env(REDIS_URL=url14, PRUNER_POLICY=str(policy))
    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        system = System(url, conn, url14)
        lead = lead_id()
        monday = (NOW - timedelta(days=NOW.weekday() + 35)).replace(hour=8)
        calls = [
            ev("call_attempted", lead, monday + timedelta(days=7 * w, hours=h)) for w in range(4) for h in range(10)
        ]
        system.send(calls)
        doc = system.lead(lead)
        assert (doc["state"], doc["loss_reason"], last(doc)[0]) == ("LOST", "no_response", "call_cadence_exhausted")
    finally:
        stop(web)
        stop(worker)
        conn.flushdb()
