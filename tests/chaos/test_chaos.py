"""The chaos run at CI size (~1 minute): faults everywhere, nothing acknowledged lost, no CRM effect twice."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Plan, run

pytestmark = pytest.mark.integration


def test_under_faults_nothing_is_lost_counted_twice_or_sent_twice_and_recovery_is_within_a_minute() -> None:
    result = run(Plan())
    print(result.details(), end="")
    print(result.summary())
    assert result.acknowledged == result.events  # the sender retried every refusal until it was acknowledged
    assert result.lost == 0 and result.double == 0
    assert result.wrong_state == []
    assert result.duplicate_effects == [] and result.missing_effects == []
    assert result.clock_survived, "the clock exited during the Redis outage"
    assert all(f.recovered_after is not None and f.recovered_after <= 60 for f in result.faults), result.details()
    assert result.outbox_empty_after_s is not None and result.outbox_empty_after_s <= 60, result.details()
    assert {f.name for f in result.faults} == {
        "SIGKILL worker",
        "SIGTERM worker",
        "SIGKILL redis",
        "SIGKILL both workers",
    }
