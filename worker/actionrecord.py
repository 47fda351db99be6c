"""The entries of the actions record (`pruner:actions`, the last ACTIONS_KEPT actions decided).

The record is for people (the dashboard, `LeadStore.actions`) and for the GDPR purge; the
outbox, which other processes read, keeps its entries as JSON (worker/action.py). An entry
here is a msgpack array of the action's fields, most of them small codes:

    [crm, lead_id, id_tail, kind, rule, reason, at, dry_run(, extra)]

- words this store knows (CRM names, action kinds, and the states, rules and reasons the
  list index codes, worker/leadindex.py) are stored as one-byte codes: the index's words as
  their position in `leadindex.WORDS` (append-only there), the others as negative codes
  from `_OWN` (append-only here); any other word as itself;
- `id_tail` is the action id less its `crm:lead_id:rule:` prefix, which the decider always
  writes; an id of any other shape is stored whole, as a one-element list;
- `at` is epoch milliseconds when `format_ms` gives back the very same text, else the text;
- `extra` holds any other keys (`channels`, `source`), left out when there are none.

About 40 bytes, against ~120 for the same action as compressed JSON (the format until
2026-12-05, still read, as is plain JSON from before compression): at 20 actions a lead
(200 events over a year) that was ~2,500 bytes a lead while the record is filling up.
"""

from __future__ import annotations

from typing import Any

import msgspec

from rules.errors import SchemaError
from rules.events import format_ms, parse_rfc3339_ms
from worker import compression
from worker.action import Action
from worker.leadindex import WORDS

# Append only: a stored code keeps its meaning (codes -1, -2, ... in this order).
_OWN = ("hubspot", "salesforce", "mark_lost", "breakup_task", "reengage_task", "suppress", "forward_erasure")
_CODES: dict[str, int] = {word: i for i, word in enumerate(WORDS)}
_CODES.update({word: -1 - i for i, word in enumerate(_OWN)})
_FIELDS = ("id", "kind", "crm", "lead_id", "rule", "reason", "at", "dry_run")
_OLD_FORMATS = (b"{", bytes((compression.MARK,)))
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list)


def _code(word: str | None) -> int | str | None:
    return _CODES.get(word, word) if word is not None else None


def _word(stored: Any) -> Any:
    if isinstance(stored, int):
        return WORDS[stored] if stored >= 0 else _OWN[-1 - stored]
    return stored


def _ms(at: str) -> int | str:
    """`at` as epoch ms when that writes back to the same text; else the text itself."""
    try:
        ms = parse_rfc3339_ms(at, "at")
    except SchemaError:
        return at
    return ms if format_ms(ms) == at else at


def encode(action: Action) -> bytes:
    """One entry of the actions record (see the module docstring)."""
    crm, lead_id, rule = action["crm"], action["lead_id"], action["rule"]
    prefix = f"{crm}:{lead_id}:{rule}:"
    whole = action["id"]
    tail: str | list[str] = whole[len(prefix) :] if whole.startswith(prefix) else [whole]
    row: list[Any] = [
        _code(crm),
        lead_id,
        tail,
        _code(action["kind"]),
        _code(rule),
        _code(action["reason"]),
        _ms(action["at"]),
        action["dry_run"],
    ]
    extra = {k: v for k, v in action.items() if k not in _FIELDS}
    if extra:
        row.append(extra)
    return _ENCODER.encode(row)


def decode(entry: bytes) -> Action:
    """An entry of the actions record, in this format or either earlier one (compressed or plain JSON)."""
    if entry[:1] in _OLD_FORMATS:
        action: Action = msgspec.json.decode(compression.unpack(entry))
        return action
    crm, lead_id, tail, kind, rule, reason, at, dry_run, *extra = _DECODER.decode(entry)
    crm, rule = _word(crm), _word(rule)
    out: dict[str, Any] = {
        "id": tail[0] if isinstance(tail, list) else f"{crm}:{lead_id}:{rule}:{tail}",
        "kind": _word(kind),
        "crm": crm,
        "lead_id": lead_id,
        "rule": rule,
        "reason": _word(reason),
        "at": format_ms(at) if isinstance(at, int) else at,
        "dry_run": dry_run,
    }
    for more in extra:
        out.update(more)
    return out  # type: ignore[return-value]
