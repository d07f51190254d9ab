"""Held-back rows get the answer of their fingerprint: a twin's of the same attempt, else the store's."""

from __future__ import annotations

import numpy as np
import pandas as pd

import pyarrow as pa
import xxhash

from batch_pipelines.requests import FINGERPRINT_COLUMN
from batch_pipelines.results import OUTCOMES, UNAVAILABLE_CODE, ReuseStore, answer_columns, fill_held_back, fresh_answers, summarize


Q, R, S = (xxhash.xxh3_128_hexdigest(x.encode()) for x in "qrs")


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
        "cache_write_tokens": pd.array([0, None, None, None], dtype="Int64"),
        "status_code": pd.array([200, None, None, None], dtype="Int16"),
        "error_code": pd.array([None] * 4, dtype="str"),
        "error_message": pd.array([None, "absent", "absent", "absent"], dtype="str"),
        "batch_id": pd.Categorical(["batch_now", None, None, None]),
        "attempt": np.ones(4, dtype=np.int16),
    })  # fmt: skip


SOURCE = pd.DataFrame({"text": ["q", "q", "r", "s"]})
IDS = pd.Series(["a", "b", "c", "d"], dtype="str")


def test_twins_share_the_sent_row_and_the_store_answers_the_rest(tmp_path):
    store = ReuseStore(tmp_path)
    store.record(pd.DataFrame({FINGERPRINT_COLUMN: [R], "content": ["answer r"], "total_tokens": [7], "batch_id": ["batch_old"]}))
    joined = _joined().iloc[[0]]  # only row 0 was sent; rows 1-3 were held back

    out = fill_held_back(joined, SOURCE, IDS, np.array([0]), pa.array([Q, Q, R, S]), store.known(), attempt=1)

    assert out["custom_id"].tolist() == ["a", "b", "c", "d"] and out["text"].tolist() == ["q", "q", "r", "s"]
    assert out["outcome"].tolist() == ["succeeded", "succeeded", "succeeded", "missing"]
    assert out["reused"].tolist() == [False, True, True, False]
    assert out["content"].tolist()[:3] == ["answer q", "answer q", "answer r"]
    assert out["batch_id"].astype(str).tolist()[:3] == ["batch_now", "batch_now", "batch_old"]
    assert out["error_code"].iloc[3] == UNAVAILABLE_CODE  # its answer is gone: missing, sent again
    # What this round paid for: the sent row's tokens only.
    assert summarize(out).total_tokens == 10 and summarize(out).reused == 2


def test_only_answers_paid_for_now_go_to_the_store():
    joined = _joined().iloc[[0, 2, 3]]
    out = fill_held_back(joined, SOURCE, IDS, np.array([0, 2, 3]), pa.array([Q, Q, R, S]), None, attempt=1)
    out[FINGERPRINT_COLUMN] = [Q, Q, R, S]
    fresh = fresh_answers(out, answer_columns(out, ["text"]))
    assert fresh[FINGERPRINT_COLUMN].tolist() == [Q] and "custom_id" not in fresh.columns
