"""What the asset pages show beyond counts: previews of requests, results and rejected rows.

Metadata is stored with every materialization, so previews stay small: a few rows, long strings
(a base64 image) cut short.
"""

from __future__ import annotations

from typing import Any

import orjson
import pandas as pd

from batch_pipelines.requests import RejectedRow, RequestManifest
from batch_pipelines.results import OUTPUT_PREFIX

__all__ = ["PREVIEW_ROWS", "first_requests", "markdown", "rejected_preview", "results_preview", "shorten"]

PREVIEW_ROWS = 10


def first_requests(manifest: RequestManifest, count: int) -> list[Any]:
    """The first request lines of the first shard, long strings cut short."""
    lines: list[Any] = []
    if manifest.shards:
        with manifest.shards[0].path.open("rb") as fh:
            for line in fh:
                lines.append(shorten(orjson.loads(line)))
                if len(lines) >= count:
                    break
    return lines


def shorten(value: Any, width: int = 300) -> Any:
    """``value`` with every string over ``width`` characters cut."""
    if isinstance(value, str):
        return value if len(value) <= width else f"{value[:width]}... ({len(value)} chars)"
    if isinstance(value, dict):
        return {k: shorten(v, width) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v, width) for v in value]
    return value


def markdown(frame: pd.DataFrame, width: int = 80) -> str:
    """A small DataFrame as a markdown table (cells cut to ``width`` characters)."""

    def cell(value: Any) -> str:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def results_preview(frame: pd.DataFrame) -> str:
    """The first rows of a results table, with the columns a reader looks at first, as markdown."""
    wanted = ["custom_id", "outcome", *[c for c in frame.columns if c.startswith(OUTPUT_PREFIX)], "content", "error_code", "attempt"]
    return markdown(frame[[c for c in dict.fromkeys(wanted) if c in frame.columns]].head(PREVIEW_ROWS))


def rejected_preview(rejected: list[RejectedRow]) -> str:
    """The first rejected rows, why, as markdown."""
    rows = [{"row": r.row, "key": r.key, "reasons": ", ".join(r.reasons), "message": r.message} for r in rejected[:PREVIEW_ROWS]]
    return markdown(pd.DataFrame(rows))
