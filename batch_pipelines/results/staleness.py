"""Answers kept only for the content that was sent: a row that changed since is ``stale``.

A batch answers the requests it was sent. When the source row has changed since (its text
corrected, the prompt template or the model changed), the answer belongs to the old content, and
showing it beside the new text would be a silent lie. Each row's current request fingerprint
(:mod:`batch_pipelines.requests.fingerprints`) is compared with the one sent: an answered row
(succeeded, failed, invalid_output) whose fingerprints differ becomes ``stale``, its answer
cleared; the retry plan sends it again with its current content, or reports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.requests import FINGERPRINT_COLUMN
from batch_pipelines.results.outcomes import FAILED, INVALID, OUTCOMES, SUCCEEDED
from batch_pipelines.results.structured_output import OUTPUT_PREFIX

__all__ = ["STALE_CODE", "mark_stale"]

#: The error code of a stale row.
STALE_CODE = "content_changed"
_MESSAGE = "the row changed after it was sent: the answer was for its earlier content"
#: Columns that hold the answer, cleared on a stale row (tokens stay: they were paid for).
_ANSWER_COLUMNS = ("content", "finish_reason", "embedding", "flagged", "moderation", "status_code")


def mark_stale(frame: pd.DataFrame, sent: pa.Array | np.ndarray, current: pa.Array | np.ndarray) -> pd.DataFrame:
    """``frame`` with ``request_fingerprint`` (``current``) and its changed answered rows made stale.

    ``sent`` and ``current`` (text arrays) are aligned with ``frame``'s rows: the fingerprint each
    row's request was sent with (null where unknown: an id map written before fingerprints existed,
    trusted as it was), and the one its content has now (null where it can no longer become a request).
    """
    sent, current = _text(sent), _text(current)
    codes = pd.Categorical(frame["outcome"], categories=list(OUTCOMES)).codes
    answered = np.isin(codes, [SUCCEEDED, FAILED, INVALID])
    differs = pc.fill_null(pc.not_equal(sent, current), True).to_numpy(zero_copy_only=False)  # null current: changed
    changed = answered & sent.is_valid().to_numpy(zero_copy_only=False) & differs
    frame = frame.assign(**{FINGERPRINT_COLUMN: pd.array(current.cast(pa.large_string()), dtype="str")})
    if not changed.any():
        return frame
    rows = np.flatnonzero(changed)
    outcome = frame["outcome"].copy()
    outcome.iloc[rows] = "stale"
    frame = frame.assign(outcome=outcome)
    for name in [*_ANSWER_COLUMNS, *(c for c in frame.columns if c.startswith(OUTPUT_PREFIX))]:
        if name in frame.columns:
            column = frame[name].copy()
            column.iloc[rows] = None
            frame[name] = column
    for name, value in (("error_code", STALE_CODE), ("error_message", _MESSAGE)):
        column = frame[name].copy()
        column.iloc[rows] = value
        frame[name] = column
    return frame


def _text(values: pa.Array | np.ndarray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    return pa.array(values, type=pa.string(), from_pandas=True)

