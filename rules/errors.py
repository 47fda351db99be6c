"""Pruner's one exception tree. Its root lives here, in the pure core, the bottom layer every shell imports.

PrunerError                          catch this to catch anything Pruner raises on purpose
├── RulesError                       the pure core (rules/)
│   ├── SchemaError                  an event or batch does not match the canonical schema
│   └── PolicyError                  a policy file is invalid (names the key and shows the value)
├── WebhookError                     receiving webhooks (webhooks/errors.py); each maps to one status
│   ├── SignatureError               missing, malformed, stale or wrong signature     -> 401
│   ├── MalformedMessage             a Salesforce outbound message we cannot read     -> 400 fault
│   └── QueueUnavailable             the job could not be written to Redis            -> 503
└── the worker shell (worker/errors.py, worker/crm/)
    ├── ConfigError                  an environment variable has a value we cannot use
    ├── StoreError                   the lead store could not complete a write
    ├── QueryError                   a lead-list query parameter is wrong (also a ValueError)
    ├── SimulationError              `pruner simulate` cannot read its input
    ├── DevError                     `pruner dev` cannot start; the message says how to fix it
    ├── SubscribeError               `pruner hubspot subscribe`: HubSpot refused or was unreachable
    └── CrmError                     a CRM call failed
        ├── TransientCrmError        unavailable or rate limited after bounded retries: retry the drain
        ├── HubSpotApiError          HubSpot refused a request for good (4xx)
        │   └── HubSpotNotFound      the record is gone
        ├── HubSpotAuthError         the access token is refused
        ├── SalesforceAuthError      the session or login is refused
        └── SalesforceQueryError     a SOQL query failed
            └── SalesforceBulkJobError  a Bulk API 2.0 query job failed, was aborted or never finished

Exceptions used only for retry control flow never reach a caller: `Retryable` (worker/crm/http.py)
is turned into `TransientCrmError` by the CRM clients' shared retry policy, and `_Slow`
(rules/fastparse.py: take the exact parser) stays in its module.
"""

from __future__ import annotations


class PrunerError(Exception):
    """The root of every error Pruner raises on purpose."""


class RulesError(PrunerError):
    """Base class for errors of the rules core."""


class SchemaError(RulesError):
    """An event or batch does not match the canonical schema; `field` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class PolicyError(RulesError):
    """A policy file is invalid; `path` names the key (`rules.unresponsive.min_follow_ups`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem
