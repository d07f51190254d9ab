"""Held-back rows get the answer of their fingerprint: a twin's of the same attempt, else the store's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batch_pipelines.requests import FINGERPRINT_COLUMN
from batch_pipelines.results import OUTCOMES, UNAVAILABLE_CODE, ReuseStore, answer_columns, fill_held_back, fresh_answers, summarize


def _joined() -> pd.DataFrame:
    """A joined frame of four rows: row 0 sent and answered, rows 1-3 held back (no line: missing)."""
    return pd.DataFrame({
        "text": ["q", "q", "r", "s"],
        "custom_id": ["a", "b", "c", "d"],
        "outcome": pd.Categorical(["succeeded", "missing", "missing", "missing"], categories=list(OUTCOMES)),
        "content": pd.array(["answer q", None, None, None], dtype="str"),
        "total_tokens": pd.array([10, None, None, None], dtype="Int64"),
        "prompt_tokens": pd.array([6, None, None, None], dtype="Int64"),
        "completion_tokens": pd.array([4, None, None, None], dtype="Int64"),
        "cached_tokens": pd.array([0, None, None, None], dtype="Int64"),
        "status_code": pd.array([200, None, None, None], dtype="Int16"),
        "error_code": pd.array([None] * 4, dtype="str"),
        "error_message": pd.array([None, "absent", "absent", "absent"], dtype="str"),
        "batch_id": pd.Categorical(["batch_now", None, None, None]),
        "attempt": np.ones(4, dtype=np.int16),
    })  # fmt: skip


def test_twins_share_the_sent_row_and_the_store_answers_the_rest(tmp_path):
    store = ReuseStore(tmp_path)
    store.record(pd.DataFrame({FINGERPRINT_COLUMN: ["fp_r"], "content": ["answer r"], "total_tokens": [7], "batch_id": ["batch_old"]}))
    frame = _joined()
    held = np.array([False, True, True, True])
    prints = np.array(["fp_q", "fp_q", "fp_r", "fp_s"], dtype=object)

    out = fill_held_back(frame, held, prints, store.known(), answer_columns(frame, ["text"]))

    assert out["outcome"].tolist() == ["succeeded", "succeeded", "succeeded", "missing"]
    assert out["reused"].tolist() == [False, True, True, False]
    assert out["content"].tolist()[:3] == ["answer q", "answer q", "answer r"]
    assert out["batch_id"].astype(str).tolist()[:3] == ["batch_now", "batch_now", "batch_old"]
    assert out["error_code"].iloc[3] == UNAVAILABLE_CODE  # its answer is gone: missing, sent again
    # What this round paid for: the sent row's tokens only.
    assert summarize(out).total_tokens == 10 and summarize(out).reused == 2


def test_only_answers_paid_for_now_go_to_the_store():
    frame = _joined().assign(**{FINGERPRINT_COLUMN: ["fp_q", "fp_q", "fp_r", "fp_s"]})
    out = fill_held_back(frame, np.array([False, True, False, False]), frame[FINGERPRINT_COLUMN].to_numpy(dtype=object), None, answer_columns(frame, ["text"]))
    fresh = fresh_answers(out, answer_columns(frame, ["text"]))
    assert fresh[FINGERPRINT_COLUMN].tolist() == ["fp_q"] and "custom_id" not in fresh.columns
