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

__all__ = ["FINGERPRINT_COLUMN", "fingerprint_keys", "line_fingerprints"]

#: The id map's column, and the results' column, holding each row's fingerprint.
FINGERPRINT_COLUMN = "request_fingerprint"
# Every line starts with its custom_id (see spec.request_line), which holds no quote or escape.
_HEAD = len(b'{"custom_id":"')


def line_fingerprints(data: memoryview, ends: np.ndarray, ids: pa.Array, only: np.ndarray | None = None) -> pa.Array:
    """The fingerprint of each line of ``data`` (lines back to back ending at ``ends``, custom_ids ``ids``).

    With ``only`` (line numbers), of those lines alone, in that order.
    """
    if not len(ends):
        return pa.array([], pa.string())
    starts = np.concatenate(([0], ends[:-1]))
    begin = starts + _HEAD + pc.binary_length(ids).to_numpy(zero_copy_only=False) + 1  # past the id's closing quote
    stop = ends - 1  # before the newline
    if only is not None:
        begin, stop = begin[only], stop[only]
    digest = xxhash.xxh3_128_hexdigest
    lines = data.toreadonly()  # xxhash takes only read-only buffers
    return pa.array([digest(lines[b:e]) for b, e in zip(begin.tolist(), stop.tolist())], pa.string())


def fingerprint_keys(fingerprints: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each fingerprint as two unsigned 64-bit integers (its first and last 16 hex digits).

    numpy and pandas sort, search and hash those without a Python object per row; two
    fingerprints are equal exactly when both halves are.
    """
    array = fingerprints.combine_chunks() if isinstance(fingerprints, pa.ChunkedArray) else fingerprints
    array = array.cast(pa.string())
    n = len(array)
    if not n:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    if array.null_count:
        raise ValueError("fingerprints must not be null")
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset : array.offset + n + 1]
    if not np.all(np.diff(offsets) == 32):
        raise ValueError("fingerprints must be 32 hexadecimal digits")
    digits = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    halves = np.frombuffer(bytes.fromhex(digits.tobytes().decode("ascii")), dtype=">u8").astype(np.uint64).reshape(n, 2)
    return np.ascontiguousarray(halves[:, 0]), np.ascontiguousarray(halves[:, 1])
