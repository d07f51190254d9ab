"""Rows whose request was held back (see :mod:`batch_pipelines.requests.send_once`) get its answer.

A held-back row asked what another row asked: a row of the same attempt that was sent (its twin),
whose result it shares whatever it is, or a row of an earlier round whose answer is in the reuse
store (:mod:`.reuse_store`), with the batch id that bought it. Either way the row is ``reused``:
nothing was paid for it this time, so the summary leaves its tokens out of the cost. A row whose
stored answer is gone (retention ran out since the build) stays ``missing`` and is sent again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from batch_pipelines.requests import FINGERPRINT_COLUMN
from batch_pipelines.results.outcomes import REUSED_COLUMN
from batch_pipelines.results.reuse_store import KnownAnswers

__all__ = ["REUSED_COLUMN", "UNAVAILABLE_CODE", "answer_columns", "fill_held_back", "fresh_answers"]

#: The error code of a held-back row whose answer could no longer be found.
UNAVAILABLE_CODE = "reuse_unavailable"
_UNAVAILABLE = "held back for the stored answer to the same request, which is gone since (retention): sent again"
_BOOKKEEPING = frozenset({"custom_id", "outcome", "attempt", REUSED_COLUMN, FINGERPRINT_COLUMN})


def answer_columns(frame: pd.DataFrame, source_columns: Sequence[str]) -> list[str]:
    """The columns of a joined frame that make up an answer: the join's, less its bookkeeping."""
    source = set(source_columns)
    return [c for c in frame.columns if c not in source and c not in _BOOKKEEPING]


def fill_held_back(
    frame: pd.DataFrame, held: np.ndarray, fingerprints: np.ndarray, known: KnownAnswers | None, columns: Sequence[str]
) -> pd.DataFrame:
    """``frame`` with a ``reused`` column, and each ``held`` row given the answer to its fingerprint.

    ``held`` and ``fingerprints`` are aligned with ``frame``'s rows: whether the row was held
    back, and the fingerprint of its request. ``columns`` are the answer columns
    (:func:`answer_columns`); ``known`` the store's snapshot (None: twins only).
    """
    reused = np.zeros(len(frame), dtype=bool)
    held_rows = np.flatnonzero(held)
    if not len(held_rows):
        return frame.assign(**{REUSED_COLUMN: reused})
    frame = frame.copy()
    sent_rows = np.flatnonzero(~held & pd.notna(fingerprints))
    sent = pd.Index(fingerprints[sent_rows])
    first = ~sent.duplicated()
    sent, sent_rows = sent[first], sent_rows[first]
    twin = sent.get_indexer(fingerprints[held_rows])
    has_twin = twin >= 0
    if has_twin.any():
        source = sent_rows[twin[has_twin]]
        _copy(frame, held_rows[has_twin], {c: frame[c].to_numpy()[source] for c in [*columns, "outcome"]})
        reused[held_rows[has_twin]] = True
    rest = held_rows[~has_twin]
    if known is not None and len(rest):
        stored = known.answers(fingerprints[rest])
        at = stored.index.get_indexer(fingerprints[rest])
        found = at >= 0
        values = {c: (stored[c].to_numpy()[at[found]] if c in stored.columns else None) for c in columns}
        values["outcome"] = np.full(int(found.sum()), "succeeded", dtype=object)
        _copy(frame, rest[found], values)
        reused[rest[found]] = True
        rest = rest[~found]
    if len(rest):
        _copy(frame, rest, {"error_code": UNAVAILABLE_CODE, "error_message": _UNAVAILABLE})
    frame[REUSED_COLUMN] = reused
    return frame


def fresh_answers(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The answers ``frame`` paid for and got (succeeded, not reused), ready for the reuse store."""
    fresh = frame["outcome"].to_numpy(dtype=object) == "succeeded"
    if REUSED_COLUMN in frame.columns:
        fresh &= ~frame[REUSED_COLUMN].to_numpy(dtype=bool)
    fresh &= frame[FINGERPRINT_COLUMN].notna().to_numpy()
    return frame.loc[fresh, [FINGERPRINT_COLUMN, *columns]].reset_index(drop=True)


def _copy(frame: pd.DataFrame, rows: np.ndarray, values: dict[str, object]) -> None:
    """Set ``values`` (column -> array aligned with ``rows``, or one value) at ``rows`` of ``frame``, in place."""
    if not len(rows):
        return
    for name, value in values.items():
        column = frame[name].copy()
        if isinstance(column.dtype, pd.CategoricalDtype):
            new = pd.unique(pd.Series(np.atleast_1d(np.asarray(value, dtype=object))).dropna())
            column = column.cat.add_categories([v for v in new if v not in column.cat.categories])
        column.iloc[rows] = value
        frame[name] = column
