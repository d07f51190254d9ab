"""The lines of a batch's output and error files, shaped as OpenAI writes them.

Every line is ``{"id", "custom_id", "response", "error"}``. A row that got an HTTP answer has
``response: {status_code, request_id, body}`` and ``error: null``; it goes to the output file when
the status is 2xx and to the error file otherwise. A row that got none (expired, cancelled, an
upstream timeout) has ``response: null`` and ``error: {code, message}``, in the error file. Line
and request ids carry a tag of the batch id and the row's 1-based number.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["OutputLines"]

#: The error line of every row a batch did not reach before it ended, by the way it ended.
_END_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


class OutputLines:
    """Encodes the lines of one batch."""

    def __init__(self, batch_id: str) -> None:
        #: A short tag of the batch id, in every line id (and in the fault plans' stranger ids).
        self.tag = batch_id.removeprefix("batch_")[:12]
        self._line_id = f"batch_req_{self.tag}_"
        self._request_id = f"req_{self.tag}_"

    def answered(self, n: int, custom_id: str, status: int, body: Any) -> bytes:
        """Row ``n`` answered with HTTP ``status`` and ``body``."""
        return orjson.dumps(
            {
                "id": f"{self._line_id}{n}",
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"{self._request_id}{n}", "body": body},
                "error": None,
            }
        )

    def unanswered(self, n: int, custom_id: str, error: Any) -> bytes:
        """Row ``n`` that got no HTTP answer, with ``error`` ({"code", "message"})."""
        return orjson.dumps({"id": f"{self._line_id}{n}", "custom_id": custom_id, "response": None, "error": error})

    def ended(self, n: int, custom_id: str, end: str) -> bytes:
        """Row ``n`` that the batch never ran because it ended with ``end``: ``batch_expired`` or ``batch_cancelled``."""
        return self.unanswered(n, custom_id, {"code": end, "message": _END_MESSAGES[end]})
