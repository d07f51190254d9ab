"""Lines the join could not give to a row, counted with examples, so that none is lost silently.

Apart from the join because the summary reports their counts too, and the join builds a summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from batch_pipelines.results.line_formats import CorruptLine

__all__ = ["EXAMPLES", "ResultAnomalies"]

#: Ids and lines listed beside their counts.
EXAMPLES = 20


class ResultAnomalies(BaseModel):
    """Lines that could not be joined to a row, counted with examples. None of them is lost silently."""

    model_config = ConfigDict(frozen=True)

    lines_read: int = 0
    #: Lines whose custom_id was never sent (not in the source, or a rejected row's).
    unknown_lines: int = 0
    unknown_examples: list[str] = Field(default_factory=list)
    #: custom_ids with more than one line, and the lines beyond the one kept.
    duplicate_ids: int = 0
    duplicate_lines: int = 0
    duplicate_examples: list[str] = Field(default_factory=list)
    corrupt_lines: int = 0
    corrupt_examples: list[CorruptLine] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.unknown_lines or self.duplicate_lines or self.corrupt_lines)

    @classmethod
    def combined(cls, found: Sequence[ResultAnomalies]) -> ResultAnomalies:
        """The anomalies of several joins (one per attempt), counted together."""
        if len(found) == 1:
            return found[0]
        return cls(
            lines_read=sum(a.lines_read for a in found),
            unknown_lines=sum(a.unknown_lines for a in found),
            unknown_examples=[e for a in found for e in a.unknown_examples][:EXAMPLES],
            duplicate_ids=sum(a.duplicate_ids for a in found),
            duplicate_lines=sum(a.duplicate_lines for a in found),
            duplicate_examples=[e for a in found for e in a.duplicate_examples][:EXAMPLES],
            corrupt_lines=sum(a.corrupt_lines for a in found),
            corrupt_examples=[e for a in found for e in a.corrupt_examples][:EXAMPLES],
        )
