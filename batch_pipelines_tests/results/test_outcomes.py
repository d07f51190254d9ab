"""The outcome vocabulary and the two orders that pick a winner: among lines, among attempts."""

from __future__ import annotations

import pandas as pd

from batch_pipelines.results import OUTCOMES, merge_attempts
from batch_pipelines.results.outcomes import (
    ATTEMPT_RANK,
    CANCELLED,
    EXPIRED,
    FAILED,
    INVALID,
    LINE_RANK,
    MISSING,
    REJECTED,
    SUCCEEDED,
)


def test_codes_index_the_outcomes_and_every_outcome_has_both_ranks():
    assert [OUTCOMES[c] for c in (SUCCEEDED, FAILED, INVALID, EXPIRED, CANCELLED, REJECTED, MISSING)] == [
        "succeeded", "failed", "invalid_output", "expired", "cancelled", "rejected", "missing",
    ]  # fmt: skip
    assert len(LINE_RANK) == len(ATTEMPT_RANK) == len(OUTCOMES)
    # Among lines for one custom_id: a success, then an unusable answer, then a failure of any kind.
    assert LINE_RANK[SUCCEEDED] < LINE_RANK[INVALID] < LINE_RANK[FAILED] == LINE_RANK[EXPIRED] == LINE_RANK[CANCELLED]
    # Among attempts: a success, then any result, then nothing.
    assert ATTEMPT_RANK[SUCCEEDED] < ATTEMPT_RANK[[FAILED, INVALID, EXPIRED, CANCELLED, REJECTED]].min()
    assert len(set(ATTEMPT_RANK[[FAILED, INVALID, EXPIRED, CANCELLED, REJECTED]])) == 1
    assert ATTEMPT_RANK[[FAILED, INVALID, EXPIRED, CANCELLED, REJECTED]].max() < ATTEMPT_RANK[MISSING]


def test_a_later_failure_replaces_an_earlier_invalid_output_across_attempts():
    """Unlike two lines of one attempt, where the invalid answer would win: the newer result says more."""

    def attempt(n: int, outcome: str) -> pd.DataFrame:
        return pd.DataFrame({"custom_id": ["a"], "outcome": pd.Categorical([outcome], categories=list(OUTCOMES)), "attempt": [n]})

    assert merge_attempts([attempt(1, "invalid_output"), attempt(2, "failed")])["outcome"].tolist() == ["failed"]
    assert merge_attempts([attempt(1, "failed"), attempt(2, "missing")])["outcome"].tolist() == ["failed"]
    assert merge_attempts([attempt(1, "succeeded"), attempt(2, "failed")])["outcome"].tolist() == ["succeeded"]
