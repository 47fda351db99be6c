"""Errors raised while receiving webhooks; each maps to one HTTP status.

WebhookError
├── SignatureError   missing, malformed, stale or wrong signature   -> 401
└── QueueUnavailable the job could not be written to Redis          -> 503
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base class for inbound webhook errors."""


class SignatureError(WebhookError):
    """The request is not signed by the holder of the shared secret, or not recently."""


class QueueUnavailable(WebhookError):
    """Redis did not accept the job; the sender must retry."""
