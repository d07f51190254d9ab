"""The join: a batch's output and error files back onto the source rows, every row exactly once.

Lines come back out of order, split between two files (either may be absent), sometimes cut short,
written twice or naming an id nobody sent. One hash pass (Arrow dictionary encoding) matches lines
to rows; where a row has several lines the best ranked wins; then each line column is taken to
source order and let go, its memory handed back at once, so the peak stays near the line columns
plus the result. Lines that cannot be joined are counted in :class:`ResultAnomalies`; the outcome
counts always add up to the number of source rows (checked, not assumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RejectedRow, RequestManifest
from batch_pipelines.results.anomalies import EXAMPLES, ResultAnomalies
from batch_pipelines.results.body_readers import TEXT_COLUMNS, TOKEN_COLUMNS, content_columns
from batch_pipelines.results.line_formats import CorruptLine
from batch_pipelines.results.line_table import read_lines
from batch_pipelines.results.outcomes import LINE_RANK, MISSING, OUTCOMES, REJECTED
from batch_pipelines.results.structured_output import OUTPUT_PREFIX, set_errors, validate_outputs
from batch_pipelines.results.summary import Prices, ResultSummary, summarize

__all__ = ["JoinedResults", "join_results", "manifest_custom_ids"]

TEXT = pa.large_string()  # what pandas' str dtype holds

_TRAILING_COLUMNS = ("status_code", "error_code", "error_message", "batch_id", "attempt")


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
    unknown_examples = line_ids.take(pa.array(unknown[:EXAMPLES])).to_pylist()
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
    outputs = validate_outputs(output_model, columns, codes) if output_model is not None else {}

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
        duplicate_examples=ids.take(pa.array(duplicates.rows[:EXAMPLES])).to_pylist(),
        corrupt_lines=len(lines.corrupt),
        corrupt_examples=lines.corrupt[:EXAMPLES],
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
    sent = manifest.read_ids()
    where = np.full(len(index), -1, dtype=np.int64)
    where[sent["row"].to_numpy()] = np.arange(len(sent))
    ids = pa.array(sent["custom_id"], from_pandas=True).cast(TEXT).take(pa.array(where, mask=where < 0))
    if manifest.rejected:
        named = sorted((r for r in manifest.rejected if r.custom_id is not None), key=lambda r: r.row)
        at = pa.array(np.array([r.row for r in named], dtype=np.int64))
        mask = np.zeros(len(index), dtype=bool)
        mask[at.to_numpy()] = True
        ids = pc.replace_with_mask(ids, pa.array(mask), pa.array([r.custom_id for r in named], TEXT))
    return pd.Series(pd.array(ids, dtype="str"), index=index, name="custom_id")


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
    """The line kept for each row (-1: none): the best ranked (:data:`LINE_RANK`), then the first read."""
    lines = np.flatnonzero(joinable)
    rows = row_of_line[lines]
    line_of_row = np.full(n, -1, dtype=np.int64)
    per_row = np.bincount(rows, minlength=n)
    repeated = np.flatnonzero(per_row > 1)
    if not len(repeated):
        line_of_row[rows] = lines
        return line_of_row, _Duplicates(0, 0, repeated)
    order = np.lexsort((lines, LINE_RANK[outcome[lines]], rows))
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
    # Most rows without a line simply have none (a rerun holds back nearly every row): one
    # assignment for them all; only rows named by a corrupt line are told apart, one by one.
    set_errors(columns, missing, None, "sent, but absent from both the output and the error files")
    lost = {c.custom_id: c for c in corrupt if c.custom_id is not None}
    rows, error_codes, messages = [], [], []
    if lost and len(missing):
        named = pc.is_in(ids.take(pa.array(missing)), value_set=pa.array(list(lost), ids.type)).to_numpy(zero_copy_only=False)
        for row in missing[named].tolist():
            line = lost[ids[row].as_py()]
            rows.append(row)
            error_codes.append("corrupt_line")
            messages.append(f"its result is line {line.line_no} of {Path(line.path).name}, which is corrupt: {line.message}")
    for row, r in zip(rejected_at.tolist(), rejected):
        rows.append(row)
        error_codes.append(r.reasons[0] if r.reasons else "rejected")
        messages.append(f"rejected before sending: {r.message}")
    set_errors(columns, np.array(rows, dtype=np.int64), error_codes, messages)
