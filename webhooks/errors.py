"""Errors raised while receiving webhooks; each maps to one HTTP status (the whole tree: rules/errors.py).

WebhookError
├── SignatureError   missing, malformed, stale or wrong signature   -> 401
├── MalformedMessage (webhooks/salesforce.py) unreadable SOAP       -> 400 fault
└── QueueUnavailable the job could not be written to Redis          -> 503
"""

from __future__ import annotations

from rules.errors import PrunerError


class WebhookError(PrunerError):
    """Base class for inbound webhook errors."""


class SignatureError(WebhookError):
    """The request is not signed by the holder of the shared secret, or not recently."""


class QueueUnavailable(WebhookError):
    """Redis did not accept the job; the sender must retry."""
