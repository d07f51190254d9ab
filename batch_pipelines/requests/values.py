"""Python values on their way into a request: JSON serialization, missing values, key text.

The smallest pieces of the request layer, shared by the modules above: what counts as missing,
how a body becomes JSON bytes (and where it would silently turn a number into null), and the text
form of a row's key.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

import numpy as np
import orjson
import pandas as pd


class CellError(ValueError):
    """A value that cannot go into a request; ``code`` is the problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-likes
        return False


def valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"a {type(value).__name__} is not JSON")


def dumps(value: Any) -> bytes:
    """orjson with numpy scalars and Decimals; CellError (unserializable, invalid_utf8) otherwise."""
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        code = "invalid_utf8" if "UTF-8" in str(exc) else "unserializable"
        raise CellError(code, f"not serializable as JSON: {exc}") from None


def not_json(value: Any, path: str) -> str | None:
    """Where a body holds a value orjson would write as null (NaN, infinity) or choke on (NaT, NA)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, not a JSON number"
    if value is pd.NaT or value is pd.NA:
        return f"{path} is missing ({value})"
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
        return f"{path} holds NaN or infinite numbers"
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        found = not_json(v, f"{path}.{k}" if isinstance(value, dict) else f"{path}[{k}]")
        if found:
            return found
    return None


def key_text(key: Any) -> str:
    """A key's text: what a custom_id is made from, and how keys without a JSON form are shown."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, float) and key.is_integer():  # integer keys that a missing value made floats
        return str(int(key))
    if isinstance(key, (dt.date, dt.time)):
        return key.isoformat()
    return key if isinstance(key, str) else str(key)


def plain_key(value: Any) -> Any:
    """A key as a JSON-able Python value, for problem reports and the manifest."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and not valid_utf8(value):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate, shown escaped
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return plain_key(key_text(value))
