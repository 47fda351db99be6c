"""Where the lead store keeps what (all names prefixed `pruner:`); the table is in worker/store.py.

A module of its own because many readers need only a key name: the outbound drain, the GDPR
purge, the stats, the benches. They import these, not the store and what it pulls in.
"""

from __future__ import annotations

PREFIX = "pruner:lead:"
STATE_PREFIX = "pruner:state:"
CHECKPOINT_PREFIX = "pruner:ck:"
DUE_KEY = "pruner:due"
ACTIONS_KEY = "pruner:actions"
OUTBOX_PREFIX = "pruner:outbox:"
MERGED_PREFIX = "pruner:merged:"
FORGOTTEN_PREFIX = "pruner:forgotten:"
# How long a deleted lead's email hashes wait for a privacyDeletion (HubSpot retries for a day).
FORGOTTEN_TTL_S = 3 * 86_400
ACTIONS_KEPT = 100_000
# A log's copy on its way back into place, inside one Lua script (worker/transaction.py): no
# client ever sees it.
SCRATCH_KEY = "pruner:scratch"

# A lead: (crm, lead id).
Lead = tuple[str, str]


def outbox_key(crm: str) -> str:
    """Return the list of actions still to execute against one CRM."""
    return f"{OUTBOX_PREFIX}{crm}"


def lead_key(crm: str, lead_id: str) -> str:
    """Return the Redis key holding one lead's event log."""
    return f"{PREFIX}{crm}:{lead_id}"


def state_key(crm: str, lead_id: str) -> str:
    return f"{STATE_PREFIX}{crm}:{lead_id}"


def checkpoint_key(crm: str, lead_id: str) -> str:
    return f"{CHECKPOINT_PREFIX}{crm}:{lead_id}"


def forgotten_key(lead_hash: str) -> str:
    """Return the set of a forgotten lead's email hashes, kept for a late erasure."""
    return f"{FORGOTTEN_PREFIX}{lead_hash}"


def merged_key(crm: str) -> str:
    """Return the hash of merged-away record ids -> the surviving record's id."""
    return f"{MERGED_PREFIX}{crm}"


def due_member(crm: str, lead_id: str) -> str:
    return f"{crm}:{lead_id}"


def parse_due_member(member: bytes | str) -> Lead:
    text = member.decode() if isinstance(member, bytes) else member
    crm, _, lead_id = text.partition(":")
    return crm, lead_id
