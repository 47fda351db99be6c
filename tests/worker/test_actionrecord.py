"""Entries of the actions record: compact, and read back exactly (worker/actionrecord.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from worker import actionrecord, compression
from worker.action import Action


def decided(**over: object) -> Action:
    action = {
        "id": "hubspot:51000000407:breakup_grace:LOST@0#1",
        "kind": "mark_lost",
        "crm": "hubspot",
        "lead_id": "51000000407",
        "rule": "breakup_grace",
        "reason": "no_response",
        "at": "2026-03-11T13:39:59.824Z",
        "dry_run": True,
    }
    action.update(over)
    return action  # type: ignore[return-value]


def test_a_decided_action_is_about_a_fifth_of_its_json() -> None:
    action = decided()
    entry = actionrecord.encode(action)
    assert actionrecord.decode(entry) == action
    assert len(entry) <= 40, entry
    assert len(compression.pack(json.dumps(action).encode())) > 2 * len(entry)


def test_suppress_and_forwarded_erasure_keep_their_extra_keys() -> None:
    suppress = decided(
        id="salesforce:00Q5g00000ABCDE:do_not_contact:SUPPRESSED@0#1",
        kind="suppress",
        crm="salesforce",
        lead_id="00Q5g00000ABCDE",
        rule="do_not_contact",
        reason=None,
        at="2026-11-20T10:00:00Z",
        dry_run=False,
        channels=["email", "phone"],
    )
    forward = decided(
        id="hubspot:7:erasure_requested:forward", kind="forward_erasure", rule="erasure_requested", source="salesforce"
    )
    for action in (suppress, forward):
        assert actionrecord.decode(actionrecord.encode(action)) == action


def test_ids_and_times_of_other_shapes_are_kept_as_they_are() -> None:
    odd = decided(id="something-else-entirely", at="2026-03-11T14:39:59.824+01:00", rule="a_rule_of_a_newer_policy")
    assert actionrecord.decode(actionrecord.encode(odd)) == odd


def test_entries_of_earlier_versions_still_read() -> None:
    action = decided()
    raw = json.dumps(action, separators=(",", ":")).encode()
    assert actionrecord.decode(raw) == action  # before compression
    assert actionrecord.decode(compression.pack(raw)) == action  # compressed JSON, until 2026-12-05


_text = st.text(min_size=0, max_size=30)


@given(
    crm=st.sampled_from(["hubspot", "salesforce", "pipedrive"]),
    lead_id=st.text(min_size=1, max_size=20),
    tail=_text,
    kind=st.sampled_from(["mark_lost", "breakup_task", "reengage_task", "suppress", "other_kind"]),
    rule=st.one_of(st.sampled_from(["unresponsive", "reply_resets", "do_not_contact"]), _text),
    reason=st.one_of(st.none(), st.sampled_from(["no_response", "budget"]), _text),
    ms=st.integers(min_value=0, max_value=253402300799999),
    verbatim_at=st.one_of(st.none(), _text),
    whole_id=st.one_of(st.none(), _text),
    dry_run=st.booleans(),
    channels=st.one_of(st.none(), st.lists(_text, max_size=3)),
)
def test_any_action_reads_back_as_written(
    crm: str,
    lead_id: str,
    tail: str,
    kind: str,
    rule: str,
    reason: str | None,
    ms: int,
    verbatim_at: str | None,
    whole_id: str | None,
    dry_run: bool,
    channels: list[str] | None,
) -> None:
    from rules.events import format_ms

    action = decided(
        id=whole_id if whole_id is not None else f"{crm}:{lead_id}:{rule}:{tail}",
        kind=kind,
        crm=crm,
        lead_id=lead_id,
        rule=rule,
        reason=reason,
        at=verbatim_at if verbatim_at is not None else format_ms(ms),
        dry_run=dry_run,
    )
    if channels is not None:
        action["channels"] = channels
    assert actionrecord.decode(actionrecord.encode(action)) == action
