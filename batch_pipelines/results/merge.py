"""One row per custom_id across attempts, each with its final outcome (see :data:`ATTEMPT_RANK`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from batch_pipelines.results.outcomes import ATTEMPT_RANK, FAILED, OUTCOMES

__all__ = ["merge_attempts"]


def merge_attempts(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per custom_id across attempts, each with its final outcome.

    A success wins whenever it came; otherwise the latest attempt with a result (any outcome but
    missing); otherwise the latest attempt (the order is :data:`.outcomes.ATTEMPT_RANK`). Rows keep
    the order of the first frame (rows only in later frames follow), with the index the frames
    carry. Rows rejected without a custom_id (or with one their frame repeats) stay as they are:
    nothing of theirs was sent again.
    """
    if not frames:
        raise ValueError("no frames to merge")
    combined = _concat_frames(frames)
    codes = pd.Categorical(combined["outcome"], categories=list(OUTCOMES)).codes
    # An outcome outside OUTCOMES (code -1) ranks as a result, as a failure does, not as missing's.
    priority = np.where(codes < 0, ATTEMPT_RANK[FAILED], ATTEMPT_RANK[codes])
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
