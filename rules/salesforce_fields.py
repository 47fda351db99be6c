"""What an org's Salesforce fields and picklist values mean to Pruner (`SalesforceMapping`).

Orgs differ: custom fields Pruner reads (`Pruner_Reopened__c`, …), dispositions, statuses.
Every setting has a default and can be overridden (`SALESFORCE_MAPPING`, worker/config.py);
rules/salesforce_map.py reads records through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from rules.errors import SchemaError

# Free-text values in most orgs: `SalesforceMapping.from_dict` lowers them, the mapping compares lowered.
_LOWERED_SETTINGS = frozenset(
    {
        "connected_dispositions",
        "not_interested_dispositions",
        "reply_subject_prefixes",
        "inbound_call_types",
        "internal_call_types",
    }
)


@dataclass(frozen=True)
class SalesforceMapping:
    """Field names and picklist values the mapping reads; every one can be overridden."""

    open_statuses: frozenset[str] = frozenset({"Open - Not Contacted", "Working - Contacted"})
    reopened_field: str = "Pruner_Reopened__c"
    not_interested_statuses: frozenset[str] = frozenset({"Closed - Not Interested"})
    profile_fields: Mapping[str, str] = field(
        default_factory=lambda: {"source": "LeadSource", "segment": "Industry", "priority": "Rating", "email": "Email"}
    )
    # Compared case-insensitively: dispositions are free-text picklists in most orgs.
    connected_dispositions: frozenset[str] = frozenset(
        {
            "connected",
            "spoke",
            "spoke with contact",
            "conversation",
            "meeting booked",
            "meeting scheduled",
            "interested",
        }
    )
    not_interested_dispositions: frozenset[str] = frozenset({"not interested"})
    connected_min_seconds: int = 60
    call_subtypes: frozenset[str] = frozenset({"Call"})
    call_type_field: str = "CallType"
    # Compared case-insensitively, like dispositions: CTI packages write their own values.
    inbound_call_types: frozenset[str] = frozenset({"inbound"})
    internal_call_types: frozenset[str] = frozenset({"internal"})
    email_subtypes: frozenset[str] = frozenset({"Email", "ListEmail"})
    inbound_email_field: str = "Pruner_Inbound__c"
    reply_subject_prefixes: tuple[str, ...] = ("re:",)
    rescheduled_field: str = "Pruner_Rescheduled__c"
    first_meeting_field: str = "Pruner_First_Meeting__c"
    cancelled_field: str = "Pruner_Cancelled__c"
    no_show_field: str = "Pruner_No_Show__c"
    opportunity_lead_field: str = "Pruner_Lead_Id__c"
    individual_lead_field: str = "Pruner_Lead_Id__c"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SalesforceMapping:
        """Build a mapping from overrides (e.g. decoded JSON); raise SchemaError naming a bad key."""
        known = {f.name: f for f in fields(cls)}
        default = cls()
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise SchemaError(key, f"is not a Salesforce mapping setting (allowed: {', '.join(known)})")
            current = getattr(default, key)
            if isinstance(current, frozenset | tuple):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise SchemaError(key, f"must be a list of strings, got {value!r:.80}")
                lowered = key in _LOWERED_SETTINGS
                items = [v.lower() for v in value] if lowered else list(value)
                values[key] = tuple(items) if isinstance(current, tuple) else frozenset(items)
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise SchemaError(key, f"must be a non-negative integer, got {value!r:.80}")
                values[key] = value
            elif isinstance(current, str):
                if not isinstance(value, str) or not value.strip():
                    raise SchemaError(key, f"must be a non-empty string, got {value!r:.80}")
                values[key] = value.strip()
            else:  # profile_fields
                if not isinstance(value, dict) or not set(value) <= set(default.profile_fields):
                    raise SchemaError(
                        key, f"must map some of {sorted(default.profile_fields)} to fields, got {value!r:.80}"
                    )
                values[key] = {**default.profile_fields, **value}
        return cls(**values)
