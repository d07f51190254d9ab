"""Why rows (or the input as a whole) cannot become requests: codes, problems, the error raised."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from batch_pipelines.requests.values import plain_key

ProblemCode = Literal[
    # the input as a whole is unusable: raised under either policy (model_not_supported may be one row:
    # its build_body named a model the provider does not take)
    "empty_input",
    "endpoint_not_allowed",
    "missing_column",
    "forbidden_param",
    "model_not_supported",
    "unserializable_body",
    "missing_uploader",
    # one row is unusable
    "missing_key",
    "invalid_key",
    "duplicate_key",
    "custom_id_collision",
    "missing_value",
    "invalid_value",
    "invalid_utf8",
    "unserializable",
    "media_error",
    "build_body_error",
    "model_mismatch",
    "missing_max_tokens",
    "too_large",
]

_SHOWN_ROWS = 10  # rows at fault an error message lists


class Problem(BaseModel):
    """One reason a row (or, with ``row`` None, the input as a whole) cannot become a request."""

    model_config = ConfigDict(frozen=True)

    code: ProblemCode
    message: str
    #: Position of the row in the DataFrame given to build_request_files.
    row: int | None = None
    key: Any = None
    column: str | None = None


class RejectedRow(BaseModel):
    """A source row left out of the request files (``quarantine`` policy); ``row`` is its position."""

    model_config = ConfigDict(frozen=True)

    row: int
    key: Any
    #: None when the key itself is missing.
    custom_id: str | None
    problems: list[Problem]

    @property
    def reasons(self) -> list[str]:
        return list(dict.fromkeys(p.code for p in self.problems))

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(p.column for p in self.problems if p.column))

    @property
    def message(self) -> str:
        return "; ".join(p.message for p in self.problems)


class RequestValidationError(ValueError):
    """Rows (or the input as a whole) that cannot become requests; no request file was left behind.

    ``problems`` lists every problem found, ``counts`` counts them per code, and the message names
    the first rows at fault.
    """

    def __init__(self, problems: Sequence[Problem], *, total_rows: int = 0, context: str = "") -> None:
        self.problems = list(problems)
        self.counts = dict(Counter(p.code for p in self.problems))
        self.total_rows = total_rows
        super().__init__(_describe(self.problems, total_rows, context))


def _describe(problems: list[Problem], total_rows: int, context: str) -> str:
    counts = ", ".join(f"{code}: {n}" for code, n in Counter(p.code for p in problems).most_common())
    whole = [p for p in problems if p.row is None]
    by_row: dict[int, list[Problem]] = {}
    for p in problems:
        if p.row is not None:
            by_row.setdefault(p.row, []).append(p)
    where = f" for {context}" if context else ""
    if whole:
        lines = [f"the input cannot become requests{where} ({counts}):", *(f"  {p.message}" for p in whole)]
    else:
        lines = [f"{len(by_row)} of {total_rows} rows cannot become requests{where} ({counts}):"]
    for row in sorted(by_row)[:_SHOWN_ROWS]:
        lines.append(f"  row {row} (key {by_row[row][0].key!r}): " + "; ".join(p.message for p in by_row[row]))
    if len(by_row) > _SHOWN_ROWS:
        lines.append(f"  ... and {len(by_row) - _SHOWN_ROWS} more rows")
    return "\n".join(lines)


def row_problem(code: ProblemCode, message: str, row: int, key: Any, column: str | None = None) -> Problem:
    """A problem of one row, its key made JSON-able for reports and the manifest."""
    return Problem(code=code, message=message, row=row, key=plain_key(key), column=column)
