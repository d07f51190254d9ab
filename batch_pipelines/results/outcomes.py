"""The outcome vocabulary: what became of a row, as a name and as the int8 code the arrays hold, and
which outcome wins when a row has more than one.

Two questions rank outcomes, and they rank them differently:

- two lines for one custom_id in one attempt (a provider that wrote a line twice): a success beats
  an unusable answer, which beats a failure; the join keeps the best one;
- one row's results across attempts: a success beats anything; then any result (a failure too)
  beats nothing (missing), since a later attempt that never came back says nothing new.

Both orders live in :data:`_RANKS`, side by side, so they cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "ATTEMPT_RANK",
    "CANCELLED",
    "EXPIRED",
    "FAILED",
    "INVALID",
    "LINE_RANK",
    "MISSING",
    "OUTCOMES",
    "REJECTED",
    "STALE",
    "SUCCEEDED",
    "Outcome",
    "REUSED_COLUMN",
]

Outcome = Literal["succeeded", "failed", "invalid_output", "expired", "cancelled", "rejected", "missing", "stale"]
OUTCOMES: tuple[Outcome, ...] = (
    "succeeded", "failed", "invalid_output", "expired", "cancelled", "rejected", "missing", "stale",
)  # fmt: skip
SUCCEEDED, FAILED, INVALID, EXPIRED, CANCELLED, REJECTED, MISSING, STALE = range(len(OUTCOMES))

#: outcome -> (rank among the lines for one custom_id, rank among one row's attempts); lower wins.
#: No line is rejected, missing or stale (those outcomes are the join's and the staleness check's),
#: so their line rank only has to lose.
_RANKS: dict[Outcome, tuple[int, int]] = {
    "succeeded": (0, 0),
    "invalid_output": (1, 1),
    "failed": (2, 1),
    "expired": (2, 1),
    "cancelled": (2, 1),
    "rejected": (3, 1),
    "missing": (3, 2),
    # Answered, but for content the row no longer has (see .staleness): a result, not an answer.
    "stale": (3, 1),
}

#: Indexed by outcome code: ties go to the line read first.
LINE_RANK = np.array([_RANKS[o][0] for o in OUTCOMES], dtype=np.int8)
#: Indexed by outcome code: ties go to the latest attempt.
ATTEMPT_RANK = np.array([_RANKS[o][1] for o in OUTCOMES], dtype=np.int8)

#: The results' column beside ``outcome`` saying the row's answer was not paid for this time: it is
#: the answer to an identical request, sent in this attempt or bought in an earlier round.
REUSED_COLUMN = "reused"
