"""Result files read a chunk of lines at a time: into columns for the join, or one record at a time.

Every chunk becomes Arrow/NumPy arrays before the next one is read, so no dict per line is kept
and memory stays bounded by a chunk plus the columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from batch_pipelines.results.body_readers import (
    ANTHROPIC_MESSAGES,
    COLUMN_TYPES,
    GEMINI_GENERATE_CONTENT,
    LINE_TEXT,
    READERS,
    TOKEN_COLUMNS,
    TYPED,
    content_columns,
)
from batch_pipelines.results.line_formats import PARSERS, CorruptLine, Envelope, LineFormat, corrupt_line
from batch_pipelines.results.outcomes import OUTCOMES, SUCCEEDED, Outcome

__all__ = ["LineTable", "ResultLine", "iter_result_lines", "read_lines"]

#: The line format of an endpoint's result files (OpenAI's unless named here).
LINE_FORMATS: dict[str, LineFormat] = {ANTHROPIC_MESSAGES: "anthropic", GEMINI_GENERATE_CONTENT: "gemini"}
_CHUNK_BYTES = 4 << 20  # lines read and converted at once: bounds the Python objects alive


@dataclass(frozen=True, slots=True)
class ResultLine:
    """One result line, normalized whatever the provider's line format.

    ``outcome`` is the line's own: succeeded (a 2xx answer), failed, expired, cancelled, or
    invalid_output (a 2xx without a body). ``body`` is the response body (OpenAI) or the message
    (Anthropic) of a succeeded line, None otherwise.
    """

    line_no: int
    custom_id: str
    outcome: Outcome
    status_code: int | None
    error_code: str | None
    error_message: str | None
    body: dict[str, Any] | None


def iter_result_lines(path: Path, *, line_format: LineFormat = "openai") -> Iterator[ResultLine | CorruptLine]:
    """Stream a result file's lines in bounded memory, corrupt ones included as :class:`CorruptLine`.

    ``line_format`` is ``"openai"`` (``{custom_id, response: {status_code, body} | null, error}``,
    for every OpenAI-style provider), ``"anthropic"`` (``{custom_id, result: {type, ...}}``) or
    ``"gemini"`` (``{key, response | error}``).
    A corrupt line does not stop the reading: the lines after it are parsed as usual.
    """
    parse = PARSERS[line_format]
    line_no = 0
    for lines in _line_chunks(Path(path)):
        envelope = Envelope(width=1)
        first, line_no = line_no + 1, parse(lines, line_no, envelope, _whole_body, None)
        skipped = {n for n, _, _ in envelope.corrupt} | set(envelope.blank)
        numbers = (n for n in range(first, line_no + 1) if n not in skipped)
        unsuccessful = {i: rest for i, *rest in envelope.unsuccessful}
        records = zip(numbers, envelope.custom_id, envelope.status_code, envelope.fields, strict=True)
        for i, (n, cid, status, body) in enumerate(records):
            outcome, code, message = unsuccessful.get(i, (SUCCEEDED, None, None))
            yield ResultLine(n, cid, OUTCOMES[outcome], status, code, message, body)
        for n, raw, exc in envelope.corrupt:
            yield corrupt_line(path, n, raw, exc)


def _whole_body(body: Any) -> tuple[dict[str, Any]]:
    if type(body) is not dict:
        raise TypeError("the body is not an object")  # as the join's readers would
    return (body,)


def _line_chunks(path: Path) -> Iterator[list[bytes]]:
    with path.open("rb") as f:
        while lines := f.readlines(_CHUNK_BYTES):
            yield lines


@dataclass
class LineTable:
    """Every record line of a set of result files, as columns in reading order."""

    outcome: np.ndarray  # int8 index into OUTCOMES
    #: custom_id, status_code, error_code, error_message, the endpoint's content columns, TOKEN_COLUMNS
    #: (Arrow arrays; Python objects in NumPy).
    columns: dict[str, pa.Array | np.ndarray]
    corrupt: list[CorruptLine]
    #: Index of the first line of each path read, and the file index given with that path.
    starts: np.ndarray
    path_files: np.ndarray

    def file_of(self, lines: np.ndarray) -> np.ndarray:
        """The file index each of ``lines`` came from."""
        return self.path_files[np.searchsorted(self.starts, lines, side="right") - 1]


def read_lines(paths: Sequence[tuple[int, Path]], endpoint: str) -> LineTable:
    """Read ``(file index, path)`` pairs a chunk of lines at a time into one :class:`LineTable`."""
    names = (*content_columns(endpoint), *TOKEN_COLUMNS)
    read, typed = READERS[endpoint][1], TYPED.get(endpoint)
    parse = PARSERS[LINE_FORMATS.get(endpoint, "openai")]
    types = {name: COLUMN_TYPES[name] for name in ("custom_id", "status_code", "error_code", "error_message", *names)}
    parts: dict[str, list[Any]] = {name: [] for name in ("outcome", *types)}
    corrupt: list[CorruptLine] = []
    starts, read_so_far = [], 0
    for _, path in paths:
        starts.append(read_so_far)
        line_no = 0
        for lines in _line_chunks(path):
            envelope = Envelope(width=len(names))
            line_no = parse(lines, line_no, envelope, read, typed)
            del lines
            n = len(envelope.custom_id)
            read_so_far += n
            outcome = np.full(n, SUCCEEDED, dtype=np.int8)
            error_code: pa.Array = pa.nulls(n)  # type null: no memory for the usual chunk without errors
            error_message: pa.Array = error_code
            if envelope.unsuccessful:
                at, outcomes, codes, messages = (list(x) for x in zip(*envelope.unsuccessful))
                outcome[at] = outcomes
                error_code, error_message = _sparse(n, at, codes), _sparse(n, at, messages)
            parts["custom_id"].append(pa.array(envelope.custom_id, types["custom_id"]))
            parts["outcome"].append(outcome)
            parts["status_code"].append(_to_arrow(envelope.status_code, types["status_code"]))
            parts["error_code"].append(error_code)
            parts["error_message"].append(error_message)
            for i, name in enumerate(names):
                parts[name].append(_to_arrow(envelope.fields[i :: len(names)], types[name]))
            corrupt += [corrupt_line(path, number, raw, exc) for number, raw, exc in envelope.corrupt]
    # Each column's chunks are let go as soon as it is whole: at most one column is held twice.
    return LineTable(
        outcome=np.concatenate(parts.pop("outcome") or [np.zeros(0, np.int8)]),
        columns={name: _column(parts.pop(name), types[name]) for name in list(parts)},
        corrupt=corrupt,
        starts=np.array(starts, dtype=np.int64),
        path_files=np.array([index for index, _ in paths], dtype=np.int64),
    )


def _sparse(n: int, at: list[int], values: list[str | None]) -> pa.Array:
    full: list[str | None] = [None] * n
    for i, value in zip(at, values):
        full[i] = value
    return pa.array(full, LINE_TEXT)


def _to_arrow(values: list[Any], type_: pa.DataType | None) -> pa.Array | np.ndarray:
    if type_ is None:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    try:
        return pa.array(values, type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # Rare: a provider wrote a field (a token count, a finish reason) with an odd type. The row
        # keeps its answer; that field alone becomes null.
        return pa.array([value if _converts(value, type_) else None for value in values], type_)


def _converts(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([value], type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False
    return True


def _column(chunks: list[Any], type_: pa.DataType | None) -> pa.Array | np.ndarray:
    """One column's chunks as one array."""
    if type_ is None:
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=object)
    if any(c.type != type_ for c in chunks):  # null-typed chunks: an error column's chunks without errors
        if all(pa.types.is_null(c.type) for c in chunks):
            return pa.nulls(sum(len(c) for c in chunks))
        chunks = [c.cast(type_) for c in chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], type_)
