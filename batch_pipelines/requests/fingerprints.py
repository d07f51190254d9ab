"""A request's content fingerprint: what "the same request" means, row by row.

The fingerprint of a request line is a hash of everything the provider answers, the line less its
custom_id: method, endpoint and the body after the template was filled (model and parameters
included), as XXH3-128 (a specified, stable hash: a fingerprint written today matches one computed
by a later release; four times cheaper per line than a cryptographic hash, and it guards against
accidents, not adversaries: the rows are the user's own). Two rows asking the same thing share it; a row whose text, prompt or model changed
gets another. The results pair an answer with a row only while the row's fingerprint is the one
that was sent.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = ["FINGERPRINT_COLUMN", "line_fingerprints"]

#: The id map's column, and the results' column, holding each row's fingerprint.
FINGERPRINT_COLUMN = "request_fingerprint"
# Every line starts with its custom_id (see spec.request_line), which holds no quote or escape.
_HEAD = len(b'{"custom_id":"')


def line_fingerprints(data: memoryview, ends: np.ndarray, ids: pa.Array) -> pa.Array:
    """The fingerprint of each line of ``data`` (lines back to back ending at ``ends``, custom_ids ``ids``)."""
    if not len(ends):
        return pa.array([], pa.string())
    starts = np.concatenate(([0], ends[:-1]))
    begin = starts + _HEAD + pc.binary_length(ids).to_numpy(zero_copy_only=False) + 1  # past the id's closing quote
    stop = ends - 1  # before the newline
    digest = xxhash.xxh3_128_hexdigest
    lines = data.toreadonly()  # xxhash takes only read-only buffers
    return pa.array([digest(lines[b:e]) for b, e in zip(begin.tolist(), stop.tolist())], pa.string())
