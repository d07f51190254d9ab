"""A row answered for content it no longer has becomes ``stale``: answer cleared, sent again or reported."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batch_pipelines.results import STALE_CODE, mark_stale, plan_retry, summarize
from batch_pipelines_tests.support.result_files import http_error, join, ok, source


def test_changed_answered_rows_become_stale_and_lose_their_answer(tmp_path):
    df, ids = source(4)
    frame = join(tmp_path, df, ids, [ok("r0"), ok("r1")], [http_error("r2", 500)]).frame  # r3: missing
    sent = np.array(["f0", "f1", "f2", "f3"], dtype=object)
    now = np.array(["f0", "F1", "F2", "F3"], dtype=object)

    marked = mark_stale(frame, sent, now)

    assert marked["outcome"].astype(str).tolist() == ["succeeded", "stale", "stale", "missing"]
    assert pd.isna(marked["content"].iloc[1]) and marked["content"].iloc[0] == "fine"
    assert marked["error_code"].tolist()[1:3] == [STALE_CODE, STALE_CODE]
    assert marked["request_fingerprint"].tolist() == now.tolist()
    assert int(marked["prompt_tokens"].sum()) == int(frame["prompt_tokens"].sum())  # what was paid for stays
    assert summarize(marked).stale == 2


def test_a_row_that_can_no_longer_be_a_request_is_stale_and_an_unknown_sent_one_is_trusted(tmp_path):
    df, ids = source(2)
    frame = join(tmp_path, df, ids, [ok("r0"), ok("r1")]).frame
    marked = mark_stale(frame, np.array(["f0", None], dtype=object), np.array([None, "f1"], dtype=object))
    assert marked["outcome"].astype(str).tolist() == ["stale", "succeeded"]


def test_stale_rows_are_sent_again_unless_reported(tmp_path):
    df, ids = source(3)
    frame = join(tmp_path, df, ids, [ok("r0"), ok("r1"), ok("r2")]).frame
    marked = mark_stale(frame, np.array(["a", "b", "c"], dtype=object), np.array(["a", "B", "c"], dtype=object))
    assert plan_retry(marked).custom_ids == ["r1"] and plan_retry(marked).retry_reasons == {"stale": 1}
    kept = plan_retry(marked, retry_stale=False)
    assert kept.empty and kept.kept_reasons == {"stale": 1}
