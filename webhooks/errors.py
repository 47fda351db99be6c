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


def not_json(exc: BaseException) -> ApiError:
    """The 400 for a body that is not JSON; a RecursionError (arrays or objects nested past
    Python's recursion limit, which no sender nests more than three deep) says so."""
    if isinstance(exc, RecursionError):
        return ApiError(400, "malformed_json", "the body is not valid JSON: it nests arrays or objects too deeply")
    return ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}")


class SignatureError(WebhookError):
    """The request is not signed by the holder of the shared secret, or not recently."""


class QueueUnavailable(WebhookError):
    """Redis did not accept the job; the sender must retry."""
