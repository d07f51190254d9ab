"""What the asset pages show beyond counts: previews of requests, results and rejected rows,
the results' columns, amounts in USD.

Metadata is stored with every materialization, so previews stay small: a few rows, long strings
(a base64 image) cut short.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import numpy as np
import orjson
import pandas as pd

from batch_pipelines.requests import RejectedRow, RequestManifest
from batch_pipelines.results import OUTPUT_PREFIX, ResultSummary

__all__ = [
    "PREVIEW_ROWS",
    "column_schema",
    "first_requests",
    "markdown",
    "rejected_preview",
    "results_preview",
    "shorten",
    "summary_metadata",
    "usd",
]

PREVIEW_ROWS = 10


def usd(amount: float) -> dg.FloatMetadataValue:
    """An amount in USD as metadata (under a key ending ``_usd``), to six significant digits: a cost
    of 0.0003844 reads so, not as 0.00038439999999999997."""
    return dg.MetadataValue.float(float(f"{amount:.6g}"))


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


def summary_metadata(summary: ResultSummary) -> dict[str, Any]:
    """A result summary's counts and tokens, its cost in USD."""
    metadata: dict[str, Any] = summary.to_metadata()
    if summary.cost_usd is not None:
        metadata["cost_usd"] = usd(summary.cost_usd)
    return metadata


#: pandas dtype kinds -> the column types the asset page shows.
_COLUMN_TYPES = {"b": "bool", "i": "int", "u": "int", "f": "float", "M": "datetime", "m": "timedelta", "O": "string", "U": "string"}


def column_schema(frame: pd.DataFrame) -> dg.TableSchema:
    """The table's columns and their types, for ``dagster/column_schema``."""
    def kind(dtype: Any) -> str:
        if isinstance(dtype, pd.StringDtype):
            return "string"
        return _COLUMN_TYPES.get(getattr(dtype, "kind", ""), str(dtype))

    return dg.TableSchema(columns=[dg.TableColumn(name=str(c), type=kind(t)) for c, t in frame.dtypes.items()])


def _cell(value: Any) -> str | int | float | bool | None:
    """A value a table preview can hold: a number or text, long text cut short, missing as empty."""
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalars as Python's
    if isinstance(value, (bool, int, float, str)) or value is None:
        if isinstance(value, float) and np.isnan(value):
            return None
        return shorten(value, 120)
    return None if value is pd.NA or value is pd.NaT else shorten(str(value), 120)


def results_preview(frame: pd.DataFrame) -> dg.TableMetadataValue:
    """The first rows of a results table, with the columns a reader looks at first, as a table."""
    wanted = ["custom_id", "outcome", *[c for c in frame.columns if c.startswith(OUTPUT_PREFIX)], "content", "error_code", "attempt"]
    shown = frame[[c for c in dict.fromkeys(wanted) if c in frame.columns]].head(PREVIEW_ROWS)
    records = [dg.TableRecord({str(c): _cell(v) for c, v in row.items()}) for _, row in shown.iterrows()]
    return dg.MetadataValue.table(records, schema=column_schema(shown))


def rejected_preview(rejected: list[RejectedRow]) -> str:
    """The first rejected rows, why, as markdown."""
    rows = [{"row": r.row, "key": r.key, "reasons": ", ".join(r.reasons), "message": r.message} for r in rejected[:PREVIEW_ROWS]]
    return markdown(pd.DataFrame(rows))
