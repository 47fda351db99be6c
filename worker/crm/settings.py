"""The CRM adapters' settings, read from the environment: portal and org names, limits, logins.

Below both the adapters and `worker.config`, which parses them with the rest of the
environment so that a bad value stops the deploy; the adapters import the config, never
the reverse (httpx's layout).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from rules.salesforce_ids import is_record_id
from worker.crm.base import CrmError
from worker.crm.ratelimit import parse_rate
from worker.errors import ConfigError

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class SalesforceAuthError(CrmError):
    """Salesforce refused the access token (401) or the login: no action can succeed until it is fixed."""


@dataclass(frozen=True)
class HubSpotSettings:
    """Portal-specific names and values (portals rename stages and add options)."""

    lead_status_property: str = "hs_lead_status"
    lost_status: str = "UNQUALIFIED"
    lost_reason_property: str = "pruner_lost_reason"
    deal_stage_property: str = "dealstage"
    deal_lost_stage: str = "closedlost"
    closed_stages: frozenset[str] = frozenset({"closedwon", "closedlost"})
    deal_reason_property: str = "closed_lost_reason"
    do_not_contact_property: str = "pruner_do_not_contact"
    reengage_months: int = 4
    # Who gets a task whose contact has no owner (HUBSPOT_FALLBACK_OWNER_ID); None: the task is unassigned.
    fallback_owner_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> HubSpotSettings:
        """Defaults, overridden by the optional `HUBSPOT_*` variables below."""
        names = {
            "HUBSPOT_LEAD_STATUS_PROPERTY": "lead_status_property",
            "HUBSPOT_LOST_STATUS": "lost_status",
            "HUBSPOT_LOST_REASON_PROPERTY": "lost_reason_property",
            "HUBSPOT_DEAL_STAGE_PROPERTY": "deal_stage_property",
            "HUBSPOT_DEAL_LOST_STAGE": "deal_lost_stage",
            "HUBSPOT_DEAL_REASON_PROPERTY": "deal_reason_property",
            "HUBSPOT_DO_NOT_CONTACT_PROPERTY": "do_not_contact_property",
        }
        values: dict[str, Any] = {attr: env[var].strip() for var, attr in names.items() if env.get(var, "").strip()}
        fallback = env.get("HUBSPOT_FALLBACK_OWNER_ID", "").strip()
        if fallback:
            if not (fallback.isascii() and fallback.isdigit()):
                # HubSpot would refuse every task naming it, long after the deploy.
                raise ConfigError(f"HUBSPOT_FALLBACK_OWNER_ID must be a HubSpot owner id (digits), got {fallback!r}")
            values["fallback_owner_id"] = fallback
        closed = env.get("HUBSPOT_DEAL_CLOSED_STAGES", "").strip()
        if closed:
            values["closed_stages"] = frozenset(s.strip() for s in closed.split(",") if s.strip())
        settings = cls(**values, **overrides)
        if settings.deal_lost_stage not in settings.closed_stages:
            settings = replace(settings, closed_stages=settings.closed_stages | {settings.deal_lost_stage})
        return settings


@dataclass(frozen=True)
class SalesforceSettings:
    """Org-specific names and the client's limits; `from_env` reads the optional variables."""

    lost_status: str = "Closed - Not Converted"
    lost_reason_field: str = "Pruner_Lost_Reason__c"
    lost_stage: str = "Closed Lost"
    opportunity_lead_field: str = "Pruner_Lead_Id__c"
    # Who gets a task whose lead has no user owner (SALESFORCE_FALLBACK_OWNER_ID); None: the API user.
    fallback_owner_id: str | None = None
    rate_limit: int = 25
    rate_window_s: float = 1.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # A Retry-After beyond this is not waited out inside a job: RQ's own retry takes over.
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("lost_reason_field", "opportunity_lead_field"):
            value = getattr(self, name)
            if not _FIELD.fullmatch(value):
                raise ConfigError(f"{name} must be a Salesforce field API name, got {value!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        owner = self.fallback_owner_id
        if owner is not None and not (is_record_id(owner) and owner.startswith("005")):
            # Only a user can own a Task: a queue (00G) or a typo would fail every task, long after the deploy.
            raise ConfigError(f"SALESFORCE_FALLBACK_OWNER_ID must be a user id (005 and 12 or 15 more), got {owner!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SalesforceSettings:
        """Read the optional `SALESFORCE_*` settings (Config.from_env calls this); raise ConfigError if unusable."""
        values: dict[str, Any] = {}
        names = {
            "lost_status": "SALESFORCE_LOST_STATUS",
            "lost_reason_field": "SALESFORCE_LOST_REASON_FIELD",
            "lost_stage": "SALESFORCE_LOST_STAGE",
            "opportunity_lead_field": "SALESFORCE_OPPORTUNITY_LEAD_FIELD",
            "fallback_owner_id": "SALESFORCE_FALLBACK_OWNER_ID",
        }
        for attr, name in names.items():
            if env.get(name, "").strip():
                values[attr] = env[name].strip()
        rate = env.get("SALESFORCE_RATE_LIMIT", "").strip()
        if rate:
            values["rate_limit"], values["rate_window_s"] = parse_rate(rate, "SALESFORCE_RATE_LIMIT")
        return cls(**values)


def credentials_login(env: Mapping[str, str]) -> Callable[[], str] | None:
    """Return a function that logs in with the configured credentials (simple-salesforce), or None.

    Username + password (+ security token), JWT bearer (username + consumer key + private
    key file) and client credentials (consumer key + secret) are supported. Only the
    session id is used: simple-salesforce builds https:// URLs, and our own base is kept
    so that an http:// instance (a local fake or sandbox proxy) still works.
    """
    user, password = env.get("SALESFORCE_USERNAME"), env.get("SALESFORCE_PASSWORD")
    key, secret = env.get("SALESFORCE_CONSUMER_KEY"), env.get("SALESFORCE_CONSUMER_SECRET")
    key_file = env.get("SALESFORCE_PRIVATE_KEY_FILE")
    common: dict[str, Any] = {"domain": env.get("SALESFORCE_DOMAIN") or "login"}
    kwargs: dict[str, Any]
    if user and password:
        kwargs = {"username": user, "password": password, "security_token": env.get("SALESFORCE_SECURITY_TOKEN", "")}
    elif user and key and key_file:
        kwargs = {"username": user, "consumer_key": key, "privatekey_file": key_file}
    elif key and secret:
        kwargs = {"consumer_key": key, "consumer_secret": secret}
    else:
        return None

    def login() -> str:
        # Imported on first login, not at start: simple-salesforce pulls in zeep and lxml (~0.3 s).
        from simple_salesforce.exceptions import SalesforceAuthenticationFailed
        from simple_salesforce.login import SalesforceLogin

        try:
            session_id, _instance = SalesforceLogin(**kwargs, **common)
        except SalesforceAuthenticationFailed as exc:
            raise SalesforceAuthError(f"Salesforce login failed: {exc.code}") from None
        return str(session_id)

    return login
