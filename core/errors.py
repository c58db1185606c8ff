"""Errors that are safe to show a client, each with a code from the public contract."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    RATE_LIMITED = "RATE_LIMITED"
    CONFLICT = "CONFLICT"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class CrunchError(Exception):
    """Base of every error whose message may reach the client as is."""

    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions


class UnauthenticatedError(CrunchError):
    code = ErrorCode.UNAUTHENTICATED

    def __init__(
        self, message: str = "Authentication required: send a valid access token."
    ) -> None:
        super().__init__(message)


class ForbiddenError(CrunchError):
    code = ErrorCode.FORBIDDEN


class NotFoundError(CrunchError):
    code = ErrorCode.NOT_FOUND


class BadUserInputError(CrunchError):
    code = ErrorCode.BAD_USER_INPUT

    def __init__(self, message: str, *, field: str | None = None) -> None:
        if field is None:
            super().__init__(message)
        else:
            super().__init__(message, field=field)


class RateLimitedError(CrunchError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        if retry_after is None:
            super().__init__(message)
        else:
            super().__init__(message, retryAfter=round(retry_after, 1))


class ConflictError(CrunchError):
    code = ErrorCode.CONFLICT
