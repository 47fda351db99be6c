"""Errors raised while receiving webhooks; each maps to one HTTP status (the whole tree: rules/errors.py).

WebhookError
├── ApiError         any refusal a JSON route raises, with its status and code
├── SignatureError   missing, malformed, stale or wrong signature   -> 401
├── MalformedMessage (webhooks/salesforce.py) unreadable SOAP       -> 400 fault
└── QueueUnavailable the job could not be written to Redis          -> 503
"""

from __future__ import annotations

from rules.errors import PrunerError


class WebhookError(PrunerError):
    """Base class for inbound webhook errors."""


class ApiError(WebhookError):
    """A refusal a JSON route raises: the app answers `{"error": code, "detail": detail}` with `status`.

    Views raise rather than return their errors (Flask's tutorial layout): one handler
    renders them all, and a helper deep in a view can refuse without threading a tuple back.
    """

    def __init__(self, status: int, code: str, detail: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or []


class SignatureError(WebhookError):
    """The request is not signed by the holder of the shared secret, or not recently."""


class QueueUnavailable(WebhookError):
    """Redis did not accept the job; the sender must retry."""
