"""The template language of a spec: ``str.format`` text over a row's columns.

A template is literal text and ``{column!conversion:format_spec}`` placeholders, parsed once;
a placeholder renders one cell as text, refusing values whose text would be meaningless.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import string
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from batch_pipelines.requests.values import CellError

# Values with a meaningful text form in a template; anything else is asked to be converted first.
_TEXT_TYPES = (str, int, float, decimal.Decimal, dt.date, dt.time, dt.timedelta)
_CONVERSIONS = {"r": repr, "s": str, "a": ascii}


class Placeholder(NamedTuple):
    """One ``{column!conversion:format_spec}`` placeholder."""

    column: str
    conversion: str | None
    format_spec: str

    def render(self, value: Any) -> str:
        """One cell as template text; CellError when it has no meaningful text form."""
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CellError("invalid_utf8", f"bytes are not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise CellError("invalid_value", f"{value} is not a finite number")
        if not isinstance(value, _TEXT_TYPES):
            raise CellError("invalid_value", f"a {type(value).__name__} has no text form here; convert the column or use build_body")
        if self.conversion:
            value = _CONVERSIONS[self.conversion](value)
        try:
            return format(value, self.format_spec)
        except (ValueError, TypeError) as exc:
            raise CellError("invalid_value", f"cannot format {value!r} with {self.format_spec!r}: {exc}") from None


def parse_template(template: str) -> list[str | Placeholder]:
    """A template as literal text and placeholders; ValueError for what ``str.format`` would reject."""
    parts: list[str | Placeholder] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template[:60]!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    for literal, name, format_spec, conversion in parsed:
        if literal:
            parts.append(literal)
        if name is None:
            continue
        if not name:
            raise ValueError(f"template {template[:60]!r} has an empty {{}}: name a column")
        if "{" in (format_spec or ""):
            raise ValueError(f"template {template[:60]!r}: nested fields in a format spec are not supported")
        if conversion is not None and conversion not in _CONVERSIONS:
            known = ", ".join(f"!{c}" for c in _CONVERSIONS)
            raise ValueError(f"template {template[:60]!r}: {{{name}!{conversion}}} is not a conversion (use {known})")
        parts.append(Placeholder(name, conversion, format_spec or ""))
    return parts


def strings(value: Any) -> Iterator[str]:
    """Every string value inside nested dicts and lists (the templates of a messages list)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
