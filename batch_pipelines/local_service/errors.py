"""The errors the local service answers with, in OpenAI's shape ``{"error": {message, type, param, code}}``.

The engine raises :class:`ServiceError`; the HTTP face turns it into a response with its status.
A row's error body inside an output line has the same shape (:func:`error_body`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServiceError", "error_body"]


def error_body(message: str, type: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ServiceError(Exception):
    """An error the service answers with: HTTP status plus OpenAI's error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)
