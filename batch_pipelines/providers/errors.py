"""Typed exceptions of the provider layer, named after openai-python's so they read familiar.

An :class:`APIError` carries what a caller needs to decide and to report: the HTTP status, the
provider's error code and message, the offending parameter and the request id to quote to support.
It holds no request or response object: those carry the Authorization header, and an exception
travels far (logs, Dagster event records, tracebacks rendered in a UI).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "UnprocessableEntityError",
]


class ProviderError(Exception):
    """Root of every error raised by the provider layer (e.g. a missing API key)."""


class APIError(ProviderError):
    """A call to a provider's API failed."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status_code: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.status_code = status_code
        self.code = code
        #: The error's category, e.g. ``invalid_request_error`` (Moonshot puts its codes here).
        self.type = type
        self.param = param
        self.request_id = request_id
        #: The provider's parsed error payload (its ``error`` object when there is one).
        self.body = body

    def __str__(self) -> str:
        parts = [str(self.status_code)] if self.status_code is not None else []
        if self.code or self.type:
            parts.append(self.code or self.type)
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        where = " ".join(p for p in (self.method, self.url) if p)
        details = [f"param={self.param}"] if self.param else []
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        if where:
            details.append(where)
        return f"{text} ({', '.join(details)})" if details else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class APIConnectionError(APIError):
    """The request never got an HTTP answer (refused, reset, DNS, TLS...)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIResponseValidationError(APIError):
    """The provider answered 2xx with a payload this client cannot read."""


class APIStatusError(APIError):
    """The provider answered with an HTTP error status."""


class BadRequestError(APIStatusError):
    """400: the request is invalid; retrying it unchanged cannot help."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such batch or file (or already deleted)."""


class ConflictError(APIStatusError):
    """409: the resource is busy or in a state that forbids the call."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but its content was rejected."""


class RateLimitError(APIStatusError):
    """429: too many requests, or (code ``insufficient_quota``) a spend limit reached: not retried."""


class InternalServerError(APIStatusError):
    """5xx: the provider failed."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_ERRORS.get(status_code, APIStatusError)
