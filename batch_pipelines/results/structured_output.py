"""Succeeded answers validated as the user's pydantic model: its fields become ``output_*`` columns,
and an answer that does not validate becomes an invalid_output with a message saying why.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from batch_pipelines.results.outcomes import INVALID, SUCCEEDED

__all__ = ["OUTPUT_PREFIX", "set_errors", "validate_outputs"]

#: Validated fields of the user's output model become columns named with this prefix (a source
#: column may well share a field's name).
OUTPUT_PREFIX = "output_"


def validate_outputs(model: type[BaseModel], columns: dict[str, Any], codes: np.ndarray) -> dict[str, Any]:
    """Validate each succeeded text as ``model``; failures become invalid_output. The fields as columns.

    ``columns`` are the joined row columns (``content``, ``finish_reason``, the error columns) and
    ``codes`` the rows' outcome codes; both are updated for the rows that fail validation.
    """
    fields = list(model.model_fields)
    values: dict[str, list[Any]] = {f: [None] * len(codes) for f in fields}
    rows = np.flatnonzero(codes == SUCCEEDED)
    texts = columns["content"][rows].tolist()
    reasons = columns["finish_reason"][rows].tolist()
    invalid, messages = [], []
    for row, text, reason in zip(rows.tolist(), texts, reasons):
        if not isinstance(text, str):
            invalid.append(row)
            messages.append(f"no text to validate (finish_reason={reason}): a refusal or a tool call?")
            continue
        try:
            dumped = model.model_validate_json(text).model_dump()
        except ValidationError as exc:
            invalid.append(row)
            messages.append(_validation_message(exc, reason))
            continue
        for f in fields:
            value = dumped[f]
            values[f][row] = value.value if isinstance(value, enum.Enum) else value
    codes[invalid] = INVALID
    set_errors(columns, invalid, ["invalid_output"] * len(invalid), messages)
    return {OUTPUT_PREFIX + f: _infer(v) for f, v in values.items()}


def set_errors(columns: dict[str, Any], rows: np.ndarray | list[int], error_codes: Any, messages: Any) -> None:
    """Write error codes and messages at ``rows`` in one assignment per column (each one copies).

    ``error_codes`` and ``messages`` are one value per row, or one value for them all.
    """
    if len(rows):
        at = np.asarray(rows, dtype=np.int64)
        for name, values in (("error_code", error_codes), ("error_message", messages)):
            array = columns[name].copy()
            array[at] = pd.array(values, dtype="str") if isinstance(values, list) else values
            columns[name] = array


def _validation_message(exc: ValidationError, finish_reason: Any) -> str:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        cut = " (finish_reason=length: the answer was cut at max_tokens)" if finish_reason == "length" else ""
        return f"output is not valid JSON{cut}: {errors[0]['msg']}"
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"output does not match {exc.title}: {shown}{more}"


def _infer(values: list[Any]) -> Any:
    """A pandas array for validated field values: str, Int64, Float64, boolean or object."""
    array = pd.array(values)
    return array.astype("str") if isinstance(array.dtype, pd.StringDtype) else array
