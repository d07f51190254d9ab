"""Rows whose request was held back (see :mod:`batch_pipelines.requests.send_once`) get its answer.

A held-back row asked what another row asked: a row of the same attempt that was sent (its twin),
whose result it shares whatever it is, or a row of an earlier round whose answer is in the reuse
store (:mod:`.reuse_store`), with the batch id that bought it. Either way the row is ``reused``:
nothing was paid for it this time, so the summary leaves its tokens out of the cost. A row whose
stored answer is gone (retention ran out since the build) stays ``missing`` and is sent again.

A rerun of a large partition holds back nearly every row, so the answers are gathered column by
column with Arrow takes, never row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.requests import FINGERPRINT_COLUMN, fingerprint_keys
from batch_pipelines.results.outcomes import REUSED_COLUMN
from batch_pipelines.results.reuse_store import KnownAnswers

__all__ = ["UNAVAILABLE_CODE", "answer_columns", "fill_held_back", "fresh_answers"]

#: The error code of a held-back row whose answer could no longer be found.
UNAVAILABLE_CODE = "reuse_unavailable"
_UNAVAILABLE = "held back for the stored answer to the same request, which is gone since (retention): sent again"
_BOOKKEEPING = frozenset({"custom_id", "outcome", "attempt", REUSED_COLUMN, FINGERPRINT_COLUMN})
_FINGERPRINT_LENGTH = 32


def answer_columns(frame: pd.DataFrame, source_columns: Sequence[str]) -> list[str]:
    """The columns of a joined frame that make up an answer: the join's, less its bookkeeping."""
    source = set(source_columns)
    return [c for c in frame.columns if c not in source and c not in _BOOKKEEPING]


def fill_held_back(
    joined: pd.DataFrame,
    source: pd.DataFrame,
    custom_ids: pd.Series,
    sent_rows: np.ndarray,
    fingerprints: pa.Array,
    known: KnownAnswers | None,
    *,
    attempt: int,
) -> pd.DataFrame:
    """One row per ``source`` row: ``joined`` for the rows sent, each other row given the answer to its fingerprint.

    ``joined`` is the join of ``source.iloc[sent_rows]`` (rows sent or rejected); every other row
    was held back. ``custom_ids`` and ``fingerprints`` (text, null where unknown) are aligned
    with ``source``; ``known`` is the store's snapshot (None: twins only). The result has
    ``joined``'s columns and a ``reused`` one.
    """
    n = len(source)
    if len(sent_rows) == n:
        return joined.assign(**{REUSED_COLUMN: np.zeros(n, dtype=bool)})
    columns = answer_columns(joined, source.columns)
    held = np.ones(n, dtype=bool)
    held[sent_rows] = False
    fingerprints = fingerprints.cast(pa.string())
    usable = pc.fill_null(pc.equal(pc.binary_length(fingerprints), _FINGERPRINT_LENGTH), False).to_numpy(zero_copy_only=False)
    origin = np.full(n, -1, dtype=np.int64)  # the row of ``joined`` whose answer each row shows (-1: none)
    origin[sent_rows] = np.arange(len(sent_rows))
    held_rows = np.flatnonzero(held & usable)
    twins = _twins(fingerprints, np.flatnonzero(~held & usable), held_rows)
    has_twin = twins >= 0
    origin[held_rows[has_twin]] = origin[twins[has_twin]]
    rest = held_rows[~has_twin]
    stored, stored_rows = None, np.zeros(0, dtype=np.int64)
    if known is not None and len(rest):
        positions = known.positions(fingerprints.take(pa.array(rest)))
        stored, found = known.answers(positions[positions >= 0], columns)
        stored_rows = rest[positions >= 0][found]
    reused = np.zeros(n, dtype=bool)
    reused[held_rows[has_twin]] = True
    reused[stored_rows] = True
    unanswered = np.flatnonzero(held & ~reused)

    results: dict[str, object] = {"custom_id": custom_ids.array}
    categories = joined["outcome"].cat.categories
    codes = pd.api.extensions.take(joined["outcome"].cat.codes.to_numpy(), origin, allow_fill=True, fill_value=categories.get_loc("missing"))
    codes[stored_rows] = categories.get_loc("succeeded")
    results["outcome"] = pd.Categorical.from_codes(codes, categories=categories)
    for name in columns:
        results[name] = _gather(joined[name], origin, stored_rows, stored, name)
    results["attempt"] = np.full(n, attempt, dtype=np.int16)
    added = [c for c in joined.columns if c not in source.columns]
    frame = pd.concat([source, pd.DataFrame({c: results[c] for c in added}, index=source.index)], axis=1)
    if len(unanswered):
        for name, value in (("error_code", UNAVAILABLE_CODE), ("error_message", _UNAVAILABLE)):
            column = frame[name].copy()
            column.iloc[unanswered] = value
            frame[name] = column
    frame[REUSED_COLUMN] = reused
    return frame


def fresh_answers(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The answers ``frame`` paid for and got (succeeded, not reused), ready for the reuse store."""
    fresh = (frame["outcome"] == "succeeded").to_numpy(dtype=bool, copy=True)
    if REUSED_COLUMN in frame.columns:
        fresh &= ~frame[REUSED_COLUMN].to_numpy(dtype=bool)
    fresh &= frame[FINGERPRINT_COLUMN].notna().to_numpy()
    return frame.loc[fresh, [FINGERPRINT_COLUMN, *columns]].reset_index(drop=True)


def _twins(fingerprints: pa.Array, sent_rows: np.ndarray, held_rows: np.ndarray) -> np.ndarray:
    """For each held row, a sent row with the same fingerprint (-1: none)."""
    twins = np.full(len(held_rows), -1, dtype=np.int64)
    if not len(sent_rows) or not len(held_rows):
        return twins
    sent_high, sent_low = fingerprint_keys(fingerprints.take(pa.array(sent_rows)))
    first = ~pd.Index(sent_high).duplicated(keep="first")
    index, sent_low, sent_rows = pd.Index(sent_high[first]), sent_low[first], sent_rows[first]
    high, low = fingerprint_keys(fingerprints.take(pa.array(held_rows)))
    at = index.get_indexer(high)
    same = (at >= 0) & (sent_low[at] == low)
    twins[same] = sent_rows[at[same]]
    return twins


def _gather(column: pd.Series, origin: np.ndarray, stored_rows: np.ndarray, stored: pa.Table | None, name: str) -> object:
    """``column`` taken at ``origin`` (-1: null), then set at ``stored_rows`` to the stored answers' ``name``, in its dtype."""
    taken = pd.api.extensions.take(column.array, origin, allow_fill=True)
    if not len(stored_rows):
        return taken
    values = stored.column(name) if stored is not None and name in stored.column_names else None
    dtype = column.dtype
    if not isinstance(taken, pd.api.extensions.ExtensionArray):  # numpy: objects, floats
        array = np.asarray(taken, dtype=object)
        array[stored_rows] = values.to_pylist() if values is not None else None
        return array
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    arrow = pa.array(taken, from_pandas=True)
    if isinstance(dtype, pd.CategoricalDtype):
        arrow = arrow.cast(pa.string())
    if values is None:
        values = pa.nulls(len(stored_rows), arrow.type)
    elif arrow.null_count == len(arrow) and not isinstance(dtype, pd.CategoricalDtype):
        # Nothing sent this time gave the column its type (every row held back): the stored answers do.
        index = np.full(len(taken), -1, dtype=np.int64)
        index[stored_rows] = np.arange(len(stored_rows))
        return _as_pandas(values.take(pa.array(index, mask=index < 0)))
    index = np.arange(len(taken))
    index[stored_rows] = len(taken) + np.arange(len(stored_rows))
    combined = pa.concat_arrays([arrow, values.cast(arrow.type)]).take(pa.array(index))
    if isinstance(dtype, pd.CategoricalDtype):
        encoded = pc.dictionary_encode(combined)
        return pd.Categorical.from_codes(pc.fill_null(encoded.indices, -1).to_numpy(), categories=encoded.dictionary.to_pylist())
    if isinstance(dtype, pd.ArrowDtype):
        return pd.array(combined, dtype=dtype)
    return dtype.__from_arrow__(combined)


def _as_pandas(array: pa.Array) -> object:
    """An Arrow column in the pandas dtype the join gives its kind: str, Int64, boolean, Float64."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return pd.array(array.cast(pa.large_string()), dtype="str")
    if pa.types.is_integer(kind):
        return pd.Int64Dtype().__from_arrow__(array.cast(pa.int64()))
    if pa.types.is_boolean(kind):
        return pd.BooleanDtype().__from_arrow__(array)
    if pa.types.is_floating(kind):
        return pd.Float64Dtype().__from_arrow__(array.cast(pa.float64()))
    return pd.array(array, dtype=pd.ArrowDtype(kind))

