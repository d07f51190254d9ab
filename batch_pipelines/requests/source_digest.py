"""One digest of everything a build reads: has the source (or the spec) changed since the request files?

The results check each row's current content against what was sent. Rebuilding every line to
learn that costs as much as the build itself; when the source and the spec are exactly those the
request files were built from, the id map's fingerprints are the current ones. The digest hashes
the spec and the profile's name, then the Arrow buffers of the key and every column the
templates read (with each array's offset and length: equal buffers and window mean equal
values). A digest that differs only means "rebuild to know"; it may differ for equal data held
otherwise in memory, never agree for different data (save a 128-bit collision).
"""

from __future__ import annotations

import orjson
import pandas as pd
import pyarrow as pa
import xxhash

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.requests.spec import RequestSpec

__all__ = ["frame_digest", "source_digest", "spec_digest"]


def spec_digest(spec: RequestSpec, profile: ProviderProfile) -> str | None:
    """The digest of what, besides the rows, decides a template build's lines; None as for :func:`source_digest`."""
    if spec.build_body is not None or spec.media:
        return None
    described = [profile.name, spec.model_dump(mode="json", exclude={"build_body", "output_model"}), spec.output_format()]
    return xxhash.xxh3_128_hexdigest(orjson.dumps(described, option=orjson.OPT_SORT_KEYS))


def source_digest(df: pd.DataFrame, spec: RequestSpec, profile: ProviderProfile) -> str | None:
    """The digest of what building ``df`` with ``spec`` for ``profile`` reads; None when it cannot tell.

    None for a ``build_body`` function (its code may change while its name does not), media
    parts (their content may live in files) and columns Arrow cannot hold.
    """
    described = spec_digest(spec, profile)
    if described is None:
        return None
    digest = xxhash.xxh3_128()
    digest.update(orjson.dumps([described, len(df)]))
    values = [df.index] if spec.key_column is None else []
    values += [df[c] for c in dict.fromkeys([*([spec.key_column] if spec.key_column else []), *spec.columns]) if c in df.columns]
    return digest.hexdigest() if _hash_values(digest, values) else None


def frame_digest(df: pd.DataFrame) -> str | None:
    """The digest of a whole DataFrame (index, column names, every value); None when Arrow cannot hold a column.

    Results join every source column, not only those the requests read: equal digests of the
    source mean the results joined from it are still the source's.
    """
    digest = xxhash.xxh3_128()
    digest.update(orjson.dumps([len(df), [str(c) for c in df.columns]]))
    return digest.hexdigest() if _hash_values(digest, [df.index, *(df.iloc[:, i] for i in range(df.shape[1]))]) else None


def _hash_values(digest: xxhash.xxh3_128, values: list[pd.Index | pd.Series]) -> bool:
    """Add each value's Arrow buffers to ``digest``; False when a value cannot be held by Arrow."""
    for value in values:
        try:
            array = pa.array(value, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeEncodeError):
            return False
        for chunk in array.chunks if isinstance(array, pa.ChunkedArray) else [array]:
            digest.update(orjson.dumps([str(chunk.type), chunk.offset, len(chunk)]))
            for buffer in chunk.buffers():
                digest.update(b"-" if buffer is None else memoryview(buffer))
    return True
