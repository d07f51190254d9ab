"""Request lines of a ``build_body`` spec: the user's function per row, its dict checked, then orjson.

The slow path, for requests a template cannot describe. The bytes equal those a template writes
for the same request, so both kinds of spec give the same files. A row that cannot become a
request is reported to the :class:`RowReport` and left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from batch_pipelines.profiles import EMBEDDINGS, MESSAGES, ProviderProfile, model_problem
from batch_pipelines.requests.custom_ids import CustomIds
from batch_pipelines.requests.json_text import lines_of_bytes
from batch_pipelines.requests.row_report import RowReport
from batch_pipelines.requests.shards import Chunk
from batch_pipelines.requests.spec import RequestSpec, merge_output_format, request_line
from batch_pipelines.requests.values import CellError, dumps, not_json


class FunctionLines:
    """Lines of a ``build_body`` spec: one Python dict per row, checked, then orjson."""

    def __init__(self, df: pd.DataFrame, spec: RequestSpec, profile: ProviderProfile, report: RowReport) -> None:
        self.df = df
        self.spec = spec
        self.profile = profile
        self.report = report
        self.output_format = spec.output_format()  # once: a schema per row would cost more than the row

    def chunk(self, start: int, stop: int, ids: CustomIds, skip: np.ndarray | None = None) -> Chunk:
        """The lines of rows ``start..stop`` (``skip`` is for template specs: a function's rows are never skipped)."""
        bad = self.report.bad[start:stop]
        lines: list[bytes] = []
        rows: list[int] = []
        weights: list[int] = []
        chunk_ids = ids.slice(start, stop - start).to_pylist()
        # to_dict boxes numpy scalars into Python ones; missing values stay NaN/None/NaT.
        for i, record in enumerate(self.df.iloc[start:stop].to_dict("records")):
            if bad[i] or (skip is not None and skip[i]):
                continue
            try:
                body = self._body(record)
                lines.append(dumps(request_line(chunk_ids[i], self.spec.endpoint, body)))
            except CellError as exc:
                self.report.row(exc.code, str(exc), start + i)
                continue
            rows.append(start + i)
            weights.append(_inputs(body))
        data, ends = lines_of_bytes(lines)
        positions = np.array(rows, dtype=np.int64)
        line_ids = ids.take(pa.array(positions, pa.int64()))
        return Chunk(positions, data, ends, line_ids, np.array(weights, dtype=np.int64) if self.spec.endpoint == EMBEDDINGS else None)

    def _body(self, record: Mapping[str, Any]) -> dict[str, Any]:
        try:
            built = self.spec.build_body(record)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the user's function: any failure is this row's problem
            raise CellError("build_body_error", f"build_body raised {type(exc).__name__}: {exc}") from None
        if not isinstance(built, dict):
            raise CellError("build_body_error", f"build_body returned a {type(built).__name__}, not a dict")
        # Same key order as a template's body: model, the row's own parameters, then the fixed ones.
        body = {"model": self.spec.model, **built}
        for key, value in self.spec.body.items():
            body.setdefault(key, value)
        merge_output_format(body, self.output_format)
        if self.spec.endpoint == MESSAGES and (type(body.get("max_tokens")) is not int or body["max_tokens"] < 1):
            raise CellError("missing_max_tokens", f"{MESSAGES} requires max_tokens (a positive integer) in every request")
        model = body.get("model")
        if self.profile.one_model_per_file and model != self.spec.model:
            message = f"model {model!r} is not the spec's {self.spec.model!r}; {self.profile.name} takes one model per file"
            raise CellError("model_mismatch", message)
        if (unsupported := model_problem(self.profile, model)) is not None:
            raise CellError("model_not_supported", unsupported)
        forbidden = sorted(self.profile.forbidden_for(str(model)) & set(body))
        if forbidden:
            raise CellError("forbidden_param", f"{self.profile.name} rejects {forbidden} for model {model!r}")
        where = not_json(body, "body")
        if where:
            raise CellError("invalid_value", where)
        return body


def _inputs(body: Mapping[str, Any]) -> int:
    """Embedding inputs in a body: a list of texts (or of token lists) counts each."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1
