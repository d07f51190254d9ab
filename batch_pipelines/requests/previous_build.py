"""What the build before this one in the same folder says of rows that have not changed since.

A fingerprint costs a hash of the whole line, the largest part of a build. When a partition is
built again after a few of its rows changed, the others' fingerprints are known: the previous
build kept the values it read (the key and every column the templates read, as an Arrow file
beside its manifest), and a row whose values are equal, under the same spec and profile
(:func:`.source_digest.spec_digest`), makes the same line. Only template specs keep values: a
``build_body`` function may change with its code, media may live in files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.requests.fingerprints import FINGERPRINT_COLUMN
from batch_pipelines.requests.manifest import MANIFEST_NAME, RequestManifest
from batch_pipelines.requests.source_digest import spec_digest
from batch_pipelines.requests.spec import RequestSpec

__all__ = ["VALUES_NAME", "read_values", "unchanged_fingerprints", "write_values"]

#: The values a build read, beside its manifest.
VALUES_NAME = "values.arrow"
_KEY = "__key__"


def read_values(df: pd.DataFrame, spec: RequestSpec) -> pa.Table | None:
    """The key and the columns ``spec`` reads, as Arrow (None: a spec whose lines these do not decide)."""
    if spec.build_body is not None or spec.media:
        return None
    keys = df.index if spec.key_column is None else df[spec.key_column]
    try:
        columns = {_KEY: pa.array(keys, from_pandas=True), **{c: pa.array(df[c], from_pandas=True) for c in spec.columns}}
    except (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeEncodeError):
        return None
    return pa.table(columns)


def write_values(values: pa.Table | None, out_dir: Path) -> None:
    """Keep ``values`` (from :func:`read_values`) for the next build in ``out_dir``."""
    path = Path(out_dir) / VALUES_NAME
    path.unlink(missing_ok=True)
    if values is not None:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, values.schema) as writer:
            writer.write_table(values)


def unchanged_fingerprints(values: pa.Table | None, spec: RequestSpec, profile: ProviderProfile, out_dir: Path) -> pa.Array | None:
    """Each row's fingerprint as the previous build in ``out_dir`` made it, where the row is unchanged (null elsewhere).

    None when nothing is known: no previous build, another spec or profile, no kept values.
    """
    out_dir = Path(out_dir)
    if values is None or not (out_dir / MANIFEST_NAME).exists() or not (out_dir / VALUES_NAME).exists():
        return None
    try:
        previous = RequestManifest.read(out_dir / MANIFEST_NAME)
        before = pa.ipc.open_file(pa.memory_map(str(out_dir / VALUES_NAME))).read_all()
        ids = previous.read_ids()
    except (OSError, ValueError, pa.ArrowException):
        return None
    if previous.spec_digest != spec_digest(spec, profile) or before.column_names != values.column_names or FINGERPRINT_COLUMN not in ids:
        return None
    now_keys, then_keys = values.column(_KEY).combine_chunks(), before.column(_KEY).combine_chunks()
    if len(now_keys) == len(then_keys) and now_keys.type == then_keys.type and now_keys.equals(then_keys):
        then = np.arange(len(now_keys))  # the same rows in the same order: the usual rebuild
    else:
        index = pd.Index(then_keys.to_pandas())
        if not index.is_unique:
            return None
        then = index.get_indexer(now_keys.to_pandas())
    present = then >= 0
    same = present.copy()
    for name in values.column_names[1:]:
        now = values.column(name).combine_chunks().filter(pa.array(present))
        old = before.column(name).combine_chunks().take(pa.array(then[present]))
        if now.type != old.type:
            return None
        equal = pc.fill_null(pc.equal(now, old), False).to_numpy(zero_copy_only=False)
        same[np.flatnonzero(present)[~equal]] = False
    # The previous build's fingerprint of each of its rows (null: rejected then).
    by_row = np.full(len(then_keys), -1, dtype=np.int64)
    by_row[ids["row"].to_numpy()] = np.arange(len(ids))
    source = np.where(same, by_row[np.where(present, then, 0)], -1)
    prints = pa.array(ids[FINGERPRINT_COLUMN], from_pandas=True).cast(pa.string())
    return prints.take(pa.array(source, mask=source < 0))
