"""custom_ids: the name of each row, derived from its key, that results are joined back by.

A key that matches ``CUSTOM_ID_PATTERN`` (the strictest provider's rule) is its own custom_id;
any other key becomes a readable slug plus a hash of its text, the same on every run and machine.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import CUSTOM_ID_PATTERN
from batch_pipelines.requests.json_text import LARGE_TEXT, arrow_text, is_arrow_text
from batch_pipelines.requests.problems import Problem, RequestValidationError, row_problem
from batch_pipelines.requests.values import is_missing, key_text, valid_utf8


def custom_ids(keys: pd.Series | pd.Index) -> pd.Series:
    """The custom_id of each key: the key itself when it matches ``^[a-zA-Z0-9_-]{1,64}$``.

    Other keys become ``<slug>-<24 hex digits of sha256(key text)>``, the slug being up to 32 safe
    characters of the key: stable across runs and machines, and still readable. Integer keys are
    their decimal text (also when a missing value made them floats). The result is aligned with
    ``keys`` (same index for a Series, the keys themselves as index for an Index).
    RequestValidationError for missing keys, duplicate keys, and distinct keys that come to one
    custom_id (``5`` and ``"5"``).
    """
    series = keys.to_series(index=keys) if isinstance(keys, pd.Index) else keys
    unique = keys.is_unique if isinstance(keys, pd.Index) else None
    ids, problems = row_custom_ids(series, unique=unique)
    if problems:
        raise RequestValidationError(problems, total_rows=len(series))
    return pd.Series(pd.array(ids.slice(0, len(series)), dtype="str"), index=series.index, name="custom_id")


def _keys_as_text(keys: pd.Series) -> tuple[pa.Array, list[int]]:
    """Each key's text (null where missing), and the rows whose key text is not valid UTF-8 (null too).

    Arrow text keys as they are, without Python objects.
    """
    if is_arrow_text(keys):
        return arrow_text(keys), []
    texts = [None if is_missing(k) else key_text(k) for k in keys]
    invalid = [i for i, t in enumerate(texts) if t is not None and not valid_utf8(t)]
    for i in invalid:  # a lone surrogate: no custom_id can be made of it
        texts[i] = None
    return pa.array(texts, LARGE_TEXT), invalid


def _hashed_id(text: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "_", text).strip("_")[:32] or "k"
    return f"{slug}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:24]}"


class CustomIds:
    """The custom_id of every row, null where the key is missing.

    Held as one text array, except for integer keys: their decimal text always is a valid
    custom_id and distinct integers never share one, so they stay integers and become text a
    chunk at a time (a million ids as text at once would be the largest thing built).
    """

    def __init__(self, values: pa.Array) -> None:
        self.values = values
        self.integers = pa.types.is_integer(values.type)

    def slice(self, start: int, length: int) -> pa.Array:
        part = self.values.slice(start, length)
        return pc.cast(part, LARGE_TEXT) if self.integers else part

    def take(self, rows: pa.Array) -> pa.Array:
        part = self.values.take(rows)
        return pc.cast(part, LARGE_TEXT) if self.integers else part

    def at(self, row: int) -> str | None:
        return self.slice(row, 1)[0].as_py()


def row_custom_ids(keys: pd.Series, *, unique: bool | None = None) -> tuple[CustomIds, list[Problem]]:
    """Each key's custom_id and the problems of the keys.

    ``unique`` says whether the keys are known to be unique (a RangeIndex is), sparing a hash of
    them all.
    """
    integers = pd.api.types.is_integer_dtype(keys.dtype)
    text, invalid = (pa.array(keys, from_pandas=True), []) if integers else _keys_as_text(keys)
    missing = text.is_null().to_numpy(zero_copy_only=False)
    unusable = np.zeros(len(keys), dtype=bool)  # a key there, but no custom_id can be made of it
    unusable[invalid] = True
    unfit = np.zeros(len(keys), dtype=bool)
    if not integers:
        fits = pc.fill_null(pc.match_substring_regex(text, CUSTOM_ID_PATTERN.pattern), False)
        unfit = ~fits.to_numpy(zero_copy_only=False) & ~missing
    ids = text
    if unfit.any():
        hashed = [_hashed_id(t) for t in text.filter(pa.array(unfit)).to_pylist()]
        ids = pc.replace_with_mask(text, pa.array(unfit), pa.array(hashed, LARGE_TEXT))
    problems = [Problem(code="missing_key", message="key is missing", row=int(r)) for r in np.flatnonzero(missing & ~unusable)]
    problems += [row_problem("invalid_key", "key is not valid UTF-8 text (a lone surrogate)", r, keys.iloc[r]) for r in invalid]
    duplicate = np.zeros(len(keys), dtype=bool)
    if not (unique if unique is not None else keys.is_unique):
        duplicate = keys.duplicated(keep=False).to_numpy() & ~missing
        problems += [row_problem("duplicate_key", "key occurs more than once", int(r), keys.iloc[r]) for r in np.flatnonzero(duplicate)]
    # Distinct keys share an id only through hashing or mixed key types (5 and "5").
    if unfit.any() or not (integers or is_arrow_text(keys)):
        counts = pc.value_counts(ids)
        shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        clash = pc.fill_null(pc.is_in(ids, shared), False).to_numpy(zero_copy_only=False) & ~duplicate & ~missing
        for r in np.flatnonzero(clash):
            message = f"custom_id {ids[r].as_py()!r} is shared with a different key"
            problems.append(row_problem("custom_id_collision", message, int(r), keys.iloc[r]))
    return CustomIds(ids), problems
