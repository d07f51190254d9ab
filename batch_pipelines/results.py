"""Results: output and error files joined back to the source rows, every row exactly once.

A batch's answers come back in files whose order is not the input order, split between an output
file and an error file (either may be absent), sometimes with a line the provider cut short, a
custom_id it wrote twice or one nobody sent. :func:`join_results` turns them into one DataFrame:
the source rows, in their order, each with exactly one ``outcome``

- ``succeeded``: an answer, parsed (and validated against the user's pydantic model, if any);
- ``failed``: an HTTP error (429, 500, 400...) or a non-HTTP failure such as ``request_timeout``;
- ``invalid_output``: an answer that is not valid JSON, does not match the model, or whose body
  has an unexpected shape;
- ``expired`` / ``cancelled``: not run before the batch expired or was cancelled;
- ``rejected``: never sent (bad input, see :mod:`batch_pipelines.requests`);
- ``missing``: sent, but absent from both files,

plus the content for the endpoint, token usage, HTTP status, error code and message, batch id and
attempt. Lines that cannot be joined (corrupt, unknown custom_id, duplicates) are counted in
:class:`ResultAnomalies`, never silently dropped; the outcome counts always add up to the number of
source rows (checked, not assumed). :func:`summarize` gives counts, tokens and cost for metadata;
:func:`plan_retry`, :func:`build_retry_requests` and :func:`merge_attempts` send again what failed
for a retryable reason and keep each row's final outcome across attempts.

Why it is fast and small: lines are read a chunk at a time; a chat completion line is decoded by
msgspec straight into the fields the join needs (orjson parses any other line whole), and only those
fields are kept, in flat lists that become Arrow arrays before the next chunk is read
(:mod:`batch_pipelines._result_lines`; OpenAI's and Anthropic's line formats plug in there).
One hash pass (Arrow dictionary encoding) matches lines to rows; then each line column is taken to
source order and let go, its memory handed back at once, so the peak stays near the line columns
plus the result.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_pipelines._result_lines import (
    ANTHROPIC_MESSAGES,
    CANCELLED,
    EXPIRED,
    FAILED,
    INVALID,
    MISSING,
    OUTCOMES,
    REJECTED,
    SUCCEEDED,
    TEXT,
    TEXT_COLUMNS,
    TOKEN_COLUMNS,
    CorruptLine,
    LineFormat,
    Outcome,
    ResultLine,
    content_columns,
    iter_result_lines,
    read_lines,
)
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RejectedRow, RequestManifest, RequestSpec, build_request_files

__all__ = [
    "ANTHROPIC_MESSAGES",
    "OUTCOMES",
    "OUTPUT_PREFIX",
    "TOKEN_COLUMNS",
    "CorruptLine",
    "JoinedResults",
    "LineFormat",
    "Outcome",
    "Prices",
    "ResultAnomalies",
    "ResultLine",
    "ResultSummary",
    "RetryPlan",
    "build_retry_requests",
    "iter_result_lines",
    "join_results",
    "manifest_custom_ids",
    "merge_attempts",
    "plan_retry",
    "summarize",
]

#: Which of two lines for one custom_id wins: lower rank, then the earlier line. A success beats
#: an unusable answer, which beats a failure.
_RANK = np.array([0, 2, 1, 2, 2, 3, 3], dtype=np.int8)
#: Validated fields of the user's output model become columns named with this prefix.
OUTPUT_PREFIX = "output_"
_EXAMPLES = 20  # ids / lines listed in anomalies beside their counts
_TRAILING_COLUMNS = ("status_code", "error_code", "error_message", "batch_id", "attempt")


# ---- the join ----------------------------------------------------------------------------------


class ResultAnomalies(BaseModel):
    """Lines that could not be joined to a row, counted with examples. None of them is lost silently."""

    model_config = ConfigDict(frozen=True)

    lines_read: int = 0
    #: Lines whose custom_id was never sent (not in the source, or a rejected row's).
    unknown_lines: int = 0
    unknown_examples: list[str] = Field(default_factory=list)
    #: custom_ids with more than one line, and the lines beyond the one kept.
    duplicate_ids: int = 0
    duplicate_lines: int = 0
    duplicate_examples: list[str] = Field(default_factory=list)
    corrupt_lines: int = 0
    corrupt_examples: list[CorruptLine] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.unknown_lines or self.duplicate_lines or self.corrupt_lines)


@dataclass(frozen=True)
class JoinedResults:
    """What :func:`join_results` returns: one row per source row, its summary and the anomalies."""

    frame: pd.DataFrame
    summary: ResultSummary
    anomalies: ResultAnomalies


def join_results(
    source: pd.DataFrame,
    custom_ids: pd.Series,
    files: Sequence[ResultFiles],
    *,
    endpoint: str,
    output_model: type[BaseModel] | None = None,
    rejected: Sequence[RejectedRow] = (),
    attempt: int = 1,
    profile: ProviderProfile | None = None,
    prices: Prices | None = None,
) -> JoinedResults:
    """Join the output and error files of ``files`` back to ``source``: every row exactly once.

    ``custom_ids`` is aligned with ``source`` (same index), as :func:`batch_pipelines.requests.custom_ids`
    gives it; it may be missing only for ``rejected`` rows (the manifest's, matched by position).
    ``endpoint`` decides the content columns: ``content`` and ``finish_reason`` (chat completions:
    the assistant text; responses: the output text; completions: the text; Anthropic's
    ``/v1/messages``, read in its own line format: the text blocks), ``embedding`` (float32
    vector), or ``flagged`` and ``moderation`` (the first result). With ``output_model`` each
    succeeded text is validated as that pydantic model and its fields become ``output_<field>``
    columns; text that is not valid JSON or does not match becomes ``invalid_output`` with the
    validation message.

    Columns added to the source's: custom_id, outcome (categorical of :data:`OUTCOMES`), the
    content columns, output_* columns, prompt_tokens, completion_tokens, total_tokens,
    cached_tokens, status_code, error_code, error_message, batch_id, attempt. A source column with
    one of these names is an error (a ``custom_id`` column equal to ``custom_ids`` is taken as is).
    ``profile`` and ``prices`` give the summary its cost.
    """
    contents = content_columns(endpoint)
    n = len(source)
    ids = _source_ids(source, custom_ids)
    source = _without_custom_id(source, custom_ids)
    _check_columns(source, contents, output_model)
    batch_ids = [f.batch_id for f in files]
    if len(set(batch_ids)) != len(batch_ids):
        raise ValueError(f"a batch appears twice in files: {batch_ids}")
    rejected_at = _rejected_positions(rejected, ids, n)

    paths = [(i, p) for i, f in enumerate(files) for p in (f.output_path, f.error_path) if p is not None]
    lines = read_lines(paths, endpoint)
    _let_go()
    line_ids = lines.columns.pop("custom_id")
    row_of_line = _match(_sent_ids(ids, rejected_at), line_ids)
    joinable = row_of_line >= 0
    line_of_row, duplicates = _winners(row_of_line, joinable, lines.outcome, n)
    has_line = line_of_row >= 0
    unknown = np.flatnonzero(~joinable)
    if int(has_line.sum()) + duplicates.lines + len(unknown) != len(lines.outcome):
        raise RuntimeError("result lines unaccounted for: joined + duplicates + unknown != lines read")
    unknown_examples = line_ids.take(pa.array(unknown[:_EXAMPLES])).to_pylist()
    del line_ids, row_of_line, joinable
    _let_go()

    codes = np.full(n, MISSING, dtype=np.int8)
    codes[has_line] = lines.outcome[line_of_row[has_line]]
    codes[rejected_at] = REJECTED
    take = pa.array(line_of_row, mask=~has_line)
    columns = {}
    for name in list(lines.columns):  # one column at a time, each line-level column let go once taken
        columns[name] = _in_row_order(lines.columns.pop(name), take, line_of_row, has_line)
        _let_go()
    batch_codes = np.full(n, -1, dtype=np.int64)
    batch_codes[has_line] = lines.file_of(line_of_row[has_line])
    _explain_unanswered(columns, codes, ids, rejected, rejected_at, lines.corrupt)
    outputs = _validate_outputs(output_model, columns, codes) if output_model is not None else {}

    counts = np.bincount(codes, minlength=len(OUTCOMES))
    if counts.sum() != n or len(counts) != len(OUTCOMES):
        raise RuntimeError(f"outcome counts {counts.tolist()} do not add up to the {n} source rows")
    results = {
        "custom_id": pd.array(ids, dtype="str"),
        "outcome": pd.Categorical.from_codes(codes, categories=list(OUTCOMES)),
        **{name: columns.pop(name) for name in contents},
        **outputs,
        **{name: columns.pop(name) for name in TOKEN_COLUMNS},
        "status_code": columns.pop("status_code"),
        "error_code": columns.pop("error_code"),
        "error_message": columns.pop("error_message"),
        "batch_id": pd.Categorical.from_codes(batch_codes, categories=batch_ids),
        "attempt": np.full(n, attempt, dtype=np.int16),
    }
    frame = pd.concat([source, pd.DataFrame(results, index=source.index, copy=False)], axis=1)
    anomalies = ResultAnomalies(
        lines_read=len(lines.outcome) + len(lines.corrupt),
        unknown_lines=len(unknown),
        unknown_examples=unknown_examples,
        duplicate_ids=duplicates.ids,
        duplicate_lines=duplicates.lines,
        duplicate_examples=ids.take(pa.array(duplicates.rows[:_EXAMPLES])).to_pylist(),
        corrupt_lines=len(lines.corrupt),
        corrupt_examples=lines.corrupt[:_EXAMPLES],
    )
    return JoinedResults(frame, summarize(frame, profile=profile, prices=prices, anomalies=anomalies), anomalies)


def manifest_custom_ids(manifest: RequestManifest, index: pd.Index) -> pd.Series:
    """The custom_id of each row ``manifest`` was built from, aligned with ``index`` (the source's).

    What :func:`join_results` and :func:`build_retry_requests` take as ``custom_ids``: the sent
    rows' ids from the manifest's id map, the rejected rows' from ``manifest.rejected`` (missing
    where the key itself was).
    """
    if manifest.rows != len(index):
        raise ValueError(f"the manifest was built from {manifest.rows} rows, not {len(index)}")
    values = np.full(len(index), None, dtype=object)
    sent = manifest.read_ids()
    values[sent["row"].to_numpy()] = sent["custom_id"].to_numpy(dtype=object)
    for r in manifest.rejected:
        values[r.row] = r.custom_id
    return pd.Series(values, index=index, dtype="str", name="custom_id")


def _let_go() -> None:
    """Hand the memory Arrow just freed back to the system.

    The line-level columns are large and freed once each, while the row-level ones replacing them
    come in other sizes: Arrow's allocator would keep the freed pages for a reuse that does not
    come, and the process would hold both copies at its peak.
    """
    pa.default_memory_pool().release_unused()


def _source_ids(source: pd.DataFrame, custom_ids: pd.Series) -> pa.Array:
    if len(custom_ids) != len(source) or not custom_ids.index.equals(source.index):
        raise ValueError("custom_ids must be aligned with source: same length and index (see requests.custom_ids)")
    try:
        return pa.array(custom_ids, type=TEXT, from_pandas=True)  # zero-copy for pandas' str dtype
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"custom_ids must be strings: {exc}") from None


def _without_custom_id(source: pd.DataFrame, custom_ids: pd.Series) -> pd.DataFrame:
    """The source minus a ``custom_id`` column that merely repeats ``custom_ids``."""
    if "custom_id" in source.columns and source["custom_id"].astype("str").equals(custom_ids.astype("str")):
        return source.drop(columns="custom_id")
    return source


def _check_columns(source: pd.DataFrame, contents: tuple[str, ...], output_model: type[BaseModel] | None) -> None:
    if output_model is not None and contents != TEXT_COLUMNS:
        raise ValueError(f"output_model needs an endpoint that answers with text, not one giving {list(contents)}")
    outputs = [OUTPUT_PREFIX + f for f in output_model.model_fields] if output_model is not None else []
    added = ["custom_id", "outcome", *contents, *outputs, *TOKEN_COLUMNS, *_TRAILING_COLUMNS]
    clash = [c for c in added if c in source.columns]
    if clash:
        raise ValueError(f"source columns {clash} clash with result columns; rename them before joining")


def _rejected_positions(rejected: Sequence[RejectedRow], ids: pa.Array, n: int) -> np.ndarray:
    at = np.array([r.row for r in rejected], dtype=np.int64)
    if len(at) and (at.min() < 0 or at.max() >= n or len(np.unique(at)) != len(at)):
        raise ValueError(f"rejected rows must be distinct positions in the {n}-row source")
    for r in rejected:
        if r.custom_id is not None and ids[r.row].as_py() not in (None, r.custom_id):
            raise ValueError(f"rejected row {r.row} has custom_id {r.custom_id!r} but custom_ids says {ids[r.row].as_py()!r}")
    unsent = np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))
    orphans = np.setdiff1d(unsent, at)
    if len(orphans):
        raise ValueError(f"{len(orphans)} rows have no custom_id and are not rejected (first positions: {orphans[:10].tolist()})")
    return at


def _sent_ids(ids: pa.Array, rejected_at: np.ndarray) -> pa.Array:
    """The custom_ids of the rows that were sent: a rejected row's id matches no line (and may repeat:
    rows rejected for a duplicate key share theirs)."""
    if not len(rejected_at):
        return ids
    unsent = np.zeros(len(ids), dtype=bool)
    unsent[rejected_at] = True
    return pc.if_else(pa.array(unsent), pa.scalar(None, ids.type), ids)


def _match(ids: pa.Array, line_ids: pa.Array) -> np.ndarray:
    """Source position of each line's custom_id (-1: not a source id), in one hash pass over both.

    Dictionary-encoding the source ids followed by the line ids numbers each distinct id in order
    of first appearance, so the source ids are unique exactly when the i-th non-null one gets code i.
    """
    encoded = pc.dictionary_encode(pa.chunked_array([ids.cast(line_ids.type), line_ids]))
    dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], line_ids.type)
    if not all(chunk.dictionary.equals(dictionary) for chunk in encoded.chunks):  # one hash table: Arrow's contract
        raise RuntimeError("Arrow encoded the source and the line custom_ids with different dictionaries")
    codes = np.concatenate([pc.fill_null(chunk.indices, -1).to_numpy() for chunk in encoded.chunks] or [np.zeros(0, np.int32)])
    source_codes, line_codes = codes[: len(ids)], codes[len(ids) :]
    present = np.flatnonzero(source_codes >= 0)
    if not np.array_equal(source_codes[present], np.arange(len(present))):
        dupes = pd.Series(ids.to_pylist()).dropna()
        raise ValueError(f"custom_ids are not unique: {dupes[dupes.duplicated()].unique()[:10].tolist()}")
    row_of_code = np.full(len(dictionary), -1, dtype=np.int64)
    row_of_code[: len(present)] = present
    return row_of_code[line_codes]


@dataclass(frozen=True)
class _Duplicates:
    ids: int
    lines: int
    rows: np.ndarray


def _winners(row_of_line: np.ndarray, joinable: np.ndarray, outcome: np.ndarray, n: int) -> tuple[np.ndarray, _Duplicates]:
    """The line kept for each row (-1: none): the best ranked, then the first read."""
    lines = np.flatnonzero(joinable)
    rows = row_of_line[lines]
    line_of_row = np.full(n, -1, dtype=np.int64)
    per_row = np.bincount(rows, minlength=n)
    repeated = np.flatnonzero(per_row > 1)
    if not len(repeated):
        line_of_row[rows] = lines
        return line_of_row, _Duplicates(0, 0, repeated)
    order = np.lexsort((lines, _RANK[outcome[lines]], rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    line_of_row[rows[order][first]] = lines[order][first]
    return line_of_row, _Duplicates(len(repeated), int(len(lines) - first.sum()), repeated)


def _in_row_order(column: pa.Array | np.ndarray, take: pa.Array, line_of_row: np.ndarray, has_line: np.ndarray) -> Any:
    """A line column taken to source order (null where a row has no line), as the pandas array the frame holds.

    Text becomes pandas' str, integers its nullable Int64 (status codes Int16), booleans boolean.
    """
    if isinstance(column, np.ndarray):  # Python objects
        rows = np.full(len(line_of_row), None, dtype=object)
        rows[has_line] = column[line_of_row[has_line]]
        return rows
    if column.null_count == len(column):  # a column no line filled (error columns of a clean batch)
        kind = TEXT if pa.types.is_null(column.type) or pa.types.is_string(column.type) else column.type
        array = pa.nulls(len(take), kind)
    else:
        array = column.take(take)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return pd.array(array.cast(TEXT), dtype="str")
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        mask = pc.is_null(array).to_numpy(zero_copy_only=False)
        if pa.types.is_boolean(array.type):
            return pd.arrays.BooleanArray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), mask)
        values = pc.fill_null(array, 0).to_numpy()
        return pd.arrays.IntegerArray(values if values.dtype == np.int16 else values.astype(np.int64), mask)
    return pd.array(array, dtype=pd.ArrowDtype(array.type))


def _explain_unanswered(
    columns: dict[str, Any],
    codes: np.ndarray,
    ids: pa.Array,
    rejected: Sequence[RejectedRow],
    rejected_at: np.ndarray,
    corrupt: list[CorruptLine],
) -> None:
    """Error code and message for rows without a line: why they were rejected, or which corrupt line they lost."""
    missing = np.flatnonzero(codes == MISSING)
    lost = {c.custom_id: c for c in corrupt if c.custom_id is not None}
    rows, error_codes, messages = [], [], []
    for row, cid in zip(missing.tolist(), ids.take(pa.array(missing)).to_pylist()):
        line = lost.get(cid)
        rows.append(row)
        if line is None:
            error_codes.append(None)
            messages.append("sent, but absent from both the output and the error files")
        else:
            error_codes.append("corrupt_line")
            messages.append(f"its result is line {line.line_no} of {Path(line.path).name}, which is corrupt: {line.message}")
    for row, r in zip(rejected_at.tolist(), rejected):
        rows.append(row)
        error_codes.append(r.reasons[0] if r.reasons else "rejected")
        messages.append(f"rejected before sending: {r.message}")
    _set_errors(columns, rows, error_codes, messages)


def _set_errors(columns: dict[str, Any], rows: list[int], error_codes: list[Any], messages: list[str]) -> None:
    """Write error codes and messages at ``rows`` in one assignment per column (each one copies)."""
    if rows:
        for name, values in (("error_code", error_codes), ("error_message", messages)):
            array = columns[name].copy()
            array[np.array(rows)] = pd.array(values, dtype="str")
            columns[name] = array


def _validate_outputs(model: type[BaseModel], columns: dict[str, Any], codes: np.ndarray) -> dict[str, Any]:
    """Validate each succeeded text as ``model``; failures become invalid_output. The fields as columns."""
    fields = list(model.model_fields)
    values: dict[str, list[Any]] = {f: [None] * len(codes) for f in fields}
    rows = np.flatnonzero(codes == SUCCEEDED)
    texts = columns["content"][rows].tolist()
    reasons = columns["finish_reason"][rows].tolist()
    invalid, messages = [], []
    for row, text, reason in zip(rows.tolist(), texts, reasons):
        if not isinstance(text, str):
            invalid.append(row)
            messages.append(f"no text to validate (finish_reason={reason}): a refusal or a tool call?")
            continue
        try:
            dumped = model.model_validate_json(text).model_dump()
        except ValidationError as exc:
            invalid.append(row)
            messages.append(_validation_message(exc, reason))
            continue
        for f in fields:
            value = dumped[f]
            values[f][row] = value.value if isinstance(value, enum.Enum) else value
    codes[invalid] = INVALID
    _set_errors(columns, invalid, ["invalid_output"] * len(invalid), messages)
    return {OUTPUT_PREFIX + f: _infer(v) for f, v in values.items()}


def _validation_message(exc: ValidationError, finish_reason: Any) -> str:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        cut = " (finish_reason=length: the answer was cut at max_tokens)" if finish_reason == "length" else ""
        return f"output is not valid JSON{cut}: {errors[0]['msg']}"
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"output does not match {exc.title}: {shown}{more}"


def _infer(values: list[Any]) -> Any:
    """A pandas array for validated field values: str, Int64, Float64, boolean or object."""
    array = pd.array(values)
    return array.astype("str") if isinstance(array.dtype, pd.StringDtype) else array


# ---- summary and cost --------------------------------------------------------------------------


class Prices(BaseModel):
    """The provider's standard (real-time) prices per million tokens, in your currency.

    Configure them yourself: prices change, so the project keeps no price list. The batch discount
    comes from the provider profile (``batch_discount``). Cached input tokens cost
    ``cached_input_per_million`` when given, else the input price.
    """

    model_config = ConfigDict(frozen=True)

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(default=None, ge=0)


class ResultSummary(BaseModel):
    """Counts per outcome, token totals, cost and failure rate of a result frame."""

    model_config = ConfigDict(frozen=True)

    rows: int
    succeeded: int = 0
    failed: int = 0
    invalid_output: int = 0
    expired: int = 0
    cancelled: int = 0
    rejected: int = 0
    missing: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    #: In the currency of the Prices given, after the batch discount; None without prices.
    cost: float | None = None
    #: Share of rows without a usable answer: 1 - succeeded / rows.
    failure_rate: float = 0.0
    unknown_lines: int = 0
    duplicate_lines: int = 0
    corrupt_lines: int = 0

    def to_metadata(self) -> dict[str, int | float]:
        """Plain values for Dagster metadata (cost left out when no prices were given)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def summarize(
    frame: pd.DataFrame,
    *,
    profile: ProviderProfile | None = None,
    prices: Prices | None = None,
    anomalies: ResultAnomalies | None = None,
) -> ResultSummary:
    """The summary of a joined (or merged) result frame; cost needs ``prices`` and ``profile``."""
    if prices is not None and profile is None:
        raise ValueError("cost needs the provider profile (its batch_discount) as well as prices")
    counts = pd.Categorical(frame["outcome"], categories=list(OUTCOMES)).value_counts()
    rows = len(frame)
    if int(counts.sum()) != rows:
        raise RuntimeError(f"outcome counts {counts.to_dict()} do not add up to the {rows} rows")
    tokens = {name: int(frame[name].sum()) for name in TOKEN_COLUMNS}
    cost = None
    if prices is not None and profile is not None:
        cached_price = prices.input_per_million if prices.cached_input_per_million is None else prices.cached_input_per_million
        full = (
            (tokens["prompt_tokens"] - tokens["cached_tokens"]) * prices.input_per_million
            + tokens["cached_tokens"] * cached_price
            + tokens["completion_tokens"] * prices.output_per_million
        ) / 1_000_000
        cost = full * (1 - profile.batch_discount)
    anomalies = anomalies or ResultAnomalies()
    return ResultSummary(
        rows=rows,
        **{outcome: int(counts[outcome]) for outcome in OUTCOMES},
        **tokens,
        cost=cost,
        failure_rate=(1 - int(counts["succeeded"]) / rows) if rows else 0.0,
        unknown_lines=anomalies.unknown_lines,
        duplicate_lines=anomalies.duplicate_lines,
        corrupt_lines=anomalies.corrupt_lines,
    )


# ---- retries -----------------------------------------------------------------------------------

#: HTTP statuses worth sending again (timeouts, conflicts, rate limits, server errors).
_RETRY_STATUSES = frozenset({408, 409, 429})
#: Failures without an HTTP status worth sending again.
_RETRY_CODES = frozenset({"request_timeout", "batch_expired", "batch_cancelled"})
#: A 429 that says the money ran out: sending again cannot help.
_NEVER_RETRY_CODES = frozenset({"insufficient_quota"})


class RetryPlan(BaseModel):
    """Which rows to send again, under which attempt number, and why (or why not)."""

    model_config = ConfigDict(frozen=True)

    #: The attempt number the retry's request files carry.
    attempt: int
    custom_ids: list[str]
    #: reason -> rows sent again: missing, expired, cancelled, http_429, http_5xx, request_timeout...
    retry_reasons: dict[str, int] = Field(default_factory=dict)
    #: reason -> rows not sent again: http_400 (and other client errors), rejected,
    #: invalid_output (unless asked), attempts_exhausted...
    kept_reasons: dict[str, int] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.custom_ids


def plan_retry(frame: pd.DataFrame, *, retry_invalid_output: bool = False, max_attempts: int = 3) -> RetryPlan:
    """The rows of a joined (or merged) frame to send again.

    Retried: missing, expired, cancelled, HTTP 408/409/429/5xx (not a 429 for
    ``insufficient_quota``), request_timeout, and invalid_output when ``retry_invalid_output``.
    Not retried: 400 and other client errors, rejected rows (fix the input), and rows already tried
    ``max_attempts`` times. Build the retry's request files with :func:`build_retry_requests`.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    codes = pd.Categorical(frame["outcome"], categories=list(OUTCOMES)).codes
    status = frame["status_code"].to_numpy(dtype=np.float64, na_value=np.nan)
    error_code = frame["error_code"].to_numpy(dtype=object, na_value=None)
    failed = codes == FAILED
    http = ~np.isnan(status)
    never = pd.Series(error_code).isin(_NEVER_RETRY_CODES).to_numpy()
    retry_http = http & (np.isin(status, list(_RETRY_STATUSES)) | (status >= 500)) & ~never
    retry_code = ~http & pd.Series(error_code).isin(_RETRY_CODES).to_numpy()
    retryable = (
        np.isin(codes, [MISSING, EXPIRED, CANCELLED])
        | (failed & (retry_http | retry_code))
        | ((codes == INVALID) & retry_invalid_output)
    )
    exhausted = retryable & (frame["attempt"].to_numpy() >= max_attempts)
    retry = retryable & ~exhausted

    reasons = np.array(OUTCOMES, dtype=object)[codes]
    http_failed = failed & http
    reasons[http_failed] = ["http_" + str(int(s)) for s in status[http_failed]]
    code_failed = failed & ~http
    reasons[code_failed] = [c or "failed" for c in error_code[code_failed]]
    kept = (codes != SUCCEEDED) & ~retry
    kept_reasons = np.where(exhausted, "attempts_exhausted", reasons)
    next_attempt = int(frame["attempt"].max()) + 1 if len(frame) else 1
    return RetryPlan(
        attempt=next_attempt,
        custom_ids=frame["custom_id"].to_numpy(dtype=object)[retry].tolist(),
        retry_reasons=_tally(reasons[retry]),
        kept_reasons=_tally(kept_reasons[kept]),
    )


def _tally(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def build_retry_requests(
    plan: RetryPlan,
    source: pd.DataFrame,
    custom_ids: pd.Series,
    spec: RequestSpec,
    out_dir: Path,
    *,
    profile: ProviderProfile,
    **options: Any,
) -> RequestManifest:
    """Request files for the plan's rows: same custom_ids, attempt number ``plan.attempt``.

    ``source`` and ``custom_ids`` are those given to :func:`join_results`; ``options`` go on to
    :func:`batch_pipelines.requests.build_request_files` (policy, upload_media, media_refs...).
    """
    if plan.empty:
        raise ValueError("the retry plan holds no rows")
    # isin, not an index lookup: ids of rejected rows may be missing or repeat (a duplicate key).
    wanted = custom_ids.isin(plan.custom_ids).to_numpy()
    found = custom_ids[wanted]
    if len(found) != len(plan.custom_ids) or not found.is_unique:
        unknown = sorted(set(plan.custom_ids) - set(found))[:10]
        repeated = found[found.duplicated()].unique()[:10].tolist()
        raise ValueError(f"the plan's custom_ids do not each name one row of custom_ids: absent {unknown}, repeated {repeated}")
    subset = source[wanted]
    manifest = build_request_files(subset, spec, out_dir, profile=profile, attempt=plan.attempt, **options)
    written = set(manifest.read_ids()["custom_id"]) | {r.custom_id for r in manifest.rejected}
    if written != set(plan.custom_ids):
        raise RuntimeError("the retry's request files do not carry the plan's custom_ids (did the spec's key_column change?)")
    return manifest


def merge_attempts(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per custom_id across attempts, each with its final outcome.

    A success wins whenever it came; otherwise the latest attempt with a result (any outcome but
    missing); otherwise the latest attempt. Rows keep the order of the first frame (rows only in
    later frames follow), with the index the frames carry. Rows rejected without a custom_id (or
    with one their frame repeats) stay as they are: nothing of theirs was sent again.
    """
    if not frames:
        raise ValueError("no frames to merge")
    combined = _concat_frames(frames)
    codes = pd.Categorical(combined["outcome"], categories=list(OUTCOMES)).codes
    priority = np.where(codes == SUCCEEDED, 0, np.where(codes == MISSING, 2, 1))
    # A row's key: where its custom_id first appears. Rows rejected without an id, or sharing one
    # within their frame (a duplicate key), are never sent again: each is a row of its own.
    frame_of = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    ids, _ = pd.factorize(combined["custom_id"])
    alone = (ids < 0) | pd.DataFrame({"frame": frame_of, "id": ids}).duplicated(keep=False).to_numpy()
    named = np.flatnonzero(~alone)
    distinct, first = np.unique(ids[named], return_index=True)
    key = np.arange(len(ids))
    key[named] = named[first][np.searchsorted(distinct, ids[named])]
    order = np.lexsort((-combined["attempt"].to_numpy(dtype=np.int64), priority, key))
    kept = np.ones(len(order), dtype=bool)
    kept[1:] = key[order][1:] != key[order][:-1]
    return combined.iloc[order[kept]]


def _concat_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate frames, with categorical columns over the union of their categories."""
    frames = list(frames)
    for name in frames[0].columns:
        kinds = [f[name].dtype for f in frames if name in f.columns]
        if all(isinstance(k, pd.CategoricalDtype) for k in kinds) and len(set(map(str, kinds))) > 1:
            categories = list(dict.fromkeys(c for k in kinds for c in k.categories))
            frames = [f.assign(**{name: f[name].cat.set_categories(categories)}) if name in f.columns else f for f in frames]
    return pd.concat(frames)
