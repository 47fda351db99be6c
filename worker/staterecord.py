"""A lead's state record (`pruner:state:{crm}:{lead_id}`, JSON): what decide writes and everyone reads.

Written by worker/decide.py, read by the store (the list index, erasure), the drain (is the
lead SUPPRESSED or WON now?), task texts, `/leads/<crm>/<id>` and `pruner explain`. Every key
is optional to a reader: records written by older versions lack the newer ones.
"""

from __future__ import annotations

from typing import Any, TypedDict


class StateRecord(TypedDict, total=False):
    state: str  # a rules.states.State value
    loss_reason: str | None
    decisions: list[dict[str, Any]]  # the latest (rules.states.Decision.to_json), oldest first
    decisions_total: int
    acted: list[str]  # both names of the decisions already acted on (worker/decide.py)
    # ...and of those a dry run "acted" on, sending nothing: a live worker acts on them for real.
    dry_acted: list[str]
    as_of_ms: int  # the `now` of the evaluation that wrote it
    # RFC 3339: when the sweep looks at the lead again. Written until 2026-12-05; now in the
    # checkpoint (`Stored.due`), so that a batch that moves only the due time leaves this record be.
    next_due: str | None
    suppression_list: bool  # the person was on the suppression list when first seen
    suppression_channels: list[str]
