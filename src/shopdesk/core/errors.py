"""Domain errors with stable codes, rendered as RFC 9457 problem+json."""
from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str = "", *, code: str | None = None, status: int | None = None,
                 field: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field
        self.extra = extra or {}

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"https://shopdesk.dev/problems/{self.code}", "status": self.status,
                                "title": self.title, "detail": self.detail, "code": self.code}
        if self.field:
            body["field"] = self.field
            body["errors"] = [{"field": self.field, "detail": self.detail}]
        body.update(self.extra)
        return body


class ValidationFailed(DomainError):
    status = 422
    code = "validation_failed"
    title = "Validation failed"


class NotFound(DomainError):
    status = 404
    code = "not_found"
    title = "Not found"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class Conflict(DomainError):
    status = 409
    code = "conflict"
    title = "Conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"
    title = "Illegal transition"


class VersionConflict(Conflict):
    code = "version_conflict"
    title = "Version conflict"


class TooLarge(DomainError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMedia(DomainError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"
