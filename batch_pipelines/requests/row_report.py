"""The row problems one build has found so far, and the rows they put out of it.

Keys, templates, media and size checks all report here while the lines are built; the build then
raises them all at once (``fail``) or lists the rows as rejected (``quarantine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from batch_pipelines.requests.custom_ids import CustomIds
from batch_pipelines.requests.problems import Problem, RejectedRow, row_problem

#: What a build does with rows at fault: raise for them all, or leave them out and list them.
Policy = Literal["fail", "quarantine"]


class RowReport:
    """Row problems found so far; ``bad`` marks the rows already out of the build."""

    def __init__(self, keys: pd.Series, problems: list[Problem], policy: Policy) -> None:
        self.keys = keys
        self.policy = policy
        self.problems: list[Problem] = []
        self.bad = np.zeros(len(keys), dtype=bool)
        self.add(problems)

    @property
    def failing(self) -> bool:
        """The build will raise: nothing more is written or uploaded, rows are only checked."""
        return self.policy == "fail" and bool(self.problems)

    def add(self, problems: Sequence[Problem]) -> None:
        self.problems.extend(problems)
        self.bad[[p.row for p in problems]] = True

    def row(self, code: str, message: str, row: int, column: str | None = None) -> None:
        self.add([row_problem(code, message, row, self.keys.iloc[row], column)])  # type: ignore[arg-type]

    def rejected(self, ids: CustomIds) -> list[RejectedRow]:
        by_row: dict[int, list[Problem]] = {}
        for p in self.problems:
            by_row.setdefault(p.row, []).append(p)  # type: ignore[arg-type]
        return [
            RejectedRow(row=row, key=by_row[row][0].key, custom_id=ids.at(row), problems=by_row[row])
            for row in sorted(by_row)
        ]
