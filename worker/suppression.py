"""The suppression list: keyed hashes that let Pruner recognise an erased or objecting person.

After an erasure Pruner keeps only HMAC-SHA-256 hashes, keyed with
`PRUNER_SUPPRESSION_KEY`, of `crm:lead_id` and of each normalized email the
lead had: enough to recognise a re-imported or re-created person, useless to
anyone without the key (a bare SHA-256 of an email is reversed by a dictionary).
Purging an erased lead from job payloads is worker/gdpr.py's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from rules.counters import LoggedEvent
from rules.events import EventType
from rules.states import ALL_CHANNELS, covered_channels
from worker.keys import Lead

SUPPRESSED_KEY = "pruner:suppressed"
AUDIT_KEY = "pruner:erasures"


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """Return the hex HMAC-SHA-256 of `kind:value` under the suppression key."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()


def lead_hash(key: bytes, crm: str, lead_id: str) -> str:
    return keyed_hash(key, "lead", f"{crm}:{lead_id}")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def email_hash(key: bytes, email: str) -> str:
    return keyed_hash(key, "email", normalize_email(email))


def objection_hash(key: bytes, crm: str, lead_id: str, channel: str | None = None) -> str:
    """Marks a suppressed lead deleted in the CRM: if the record comes back, so does SUPPRESSED.

    Without `channel`, the objection covered every channel; with one, that channel only.
    """
    return keyed_hash(key, "objected", f"{crm}:{lead_id}" + (f":{channel}" if channel else ""))


OBJECTION_CHANNELS = ("email", "phone")


def objection_hashes(key: bytes, crm: str, lead_id: str, state: Mapping[str, Any]) -> list[str]:
    """Keyed hashes recording what a suppressed lead objected to: every channel, or some."""
    channels: set[str] = set()
    for decision in state.get("decisions", []):
        if decision.get("to") == "SUPPRESSED":
            channels |= covered_channels((decision.get("inputs") or {}).get("channels") or ["all"])
    if not channels or channels >= ALL_CHANNELS:
        return [objection_hash(key, crm, lead_id)]
    return [objection_hash(key, crm, lead_id, c) for c in sorted(channels)]


def _without_email(ev: LoggedEvent) -> LoggedEvent:
    if "email" not in ev.data:
        return ev
    return ev._replace(data={k: v for k, v in ev.data.items() if k != "email"})


def screen(
    conn: Any, key: bytes | None, fresh: dict[Lead, dict[bytes, LoggedEvent]]
) -> tuple[dict[Lead, dict[bytes, LoggedEvent]], int, dict[Lead, tuple[str, ...]]]:
    """Return `fresh` without erased leads' events, how many were dropped, and listed leads.

    Listed leads are those whose email is on the suppression list (an earlier erasure of
    the same person; their events come back without the email), or suppressed records
    deleted and restored in the CRM; each with the channels it objected to (empty: all).
    One SMISMEMBER round trip on `conn`, and only where a suppression key is configured.
    """
    if key is None or not fresh:
        return fresh, 0, {}
    probes: list[tuple[Lead, str, str]] = []
    for lead, events in fresh.items():
        probes.append((lead, "lead", lead_hash(key, *lead)))
        probes.append((lead, "objected", objection_hash(key, *lead)))
        probes += [(lead, f"objected:{c}", objection_hash(key, *lead, c)) for c in OBJECTION_CHANNELS]
        for ev in events.values():
            email = ev.data.get("email") if ev.type is EventType.LEAD_PROFILE else None
            if email:
                probes.append((lead, "email", email_hash(key, email)))
    hits: list[int] = conn.smismember(SUPPRESSED_KEY, [h for _, _, h in probes])
    erased = {lead for (lead, kind, _), hit in zip(probes, hits, strict=True) if hit and kind == "lead"}
    recognised = {lead for (lead, kind, _), hit in zip(probes, hits, strict=True) if hit and kind == "email"}
    channels: dict[Lead, set[str]] = {}
    for (lead, kind, _), hit in zip(probes, hits, strict=True):
        if hit and kind.startswith("objected"):
            channels.setdefault(lead, set()).add(kind.partition(":")[2] or "all")
    # Listed: an erased person's email again (every channel), or a suppressed lead deleted
    # and restored in the CRM (the channels it had objected to).
    listed = {
        lead: () if lead in recognised or "all" in channels.get(lead, ()) else tuple(sorted(channels[lead]))
        for lead in recognised | channels.keys()
    }
    kept = {lead: events for lead, events in fresh.items() if lead not in erased}
    for lead in recognised & kept.keys():
        # Keep the counters of a re-created erased person, never their email again.
        kept[lead] = {k: _without_email(ev) for k, ev in kept[lead].items()}
    return kept, sum(len(fresh[lead]) for lead in erased), listed
