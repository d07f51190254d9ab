"""JSON text as Arrow arrays: vectorized escaping, and lines as one buffer plus end offsets.

The fast path of the request layer works on whole columns: a text column is taken from pandas as
an Arrow array without copying, JSON-escaped in one numpy pass, joined into lines by Arrow, and
handed on as one contiguous buffer with each line's end offset (the form shards are cut from).
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

LARGE_TEXT = pa.large_string()


def is_arrow_text(series: pd.Series) -> bool:
    """Whether a pandas column holds its text in Arrow (the fast path reads it without copying)."""
    return isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow"


def arrow_text(series: pd.Series) -> pa.Array:
    """An Arrow-backed text column (or slice) as one large_string Array, without copying the text."""
    array = pa.array(series)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(LARGE_TEXT)


# What JSON writes for each byte inside a string, as orjson writes it (so our lines are
# byte-identical to orjson's): a 2-byte escape for '"', '\\' and \b \t \n \f \r, \u00XX for
# the other control characters. Bytes that need no escape have length 1 and are never looked up.
_ESCAPE_TEXT = [orjson.dumps(chr(b))[1:-1] if b < 0x80 else b"?" for b in range(256)]
_ESCAPE_BYTES = np.array([list(e.ljust(6, b"\0")) for e in _ESCAPE_TEXT], dtype=np.uint8)
_LAST_BYTE = np.array([e[-1] for e in _ESCAPE_TEXT], dtype=np.uint8)
_LONG_ESCAPE = np.array([len(e) == 6 for e in _ESCAPE_TEXT])


def json_escape(array: pa.Array) -> pa.Array:
    """JSON-escape the values of a large_string array, all at once.

    One numpy scan finds the bytes to escape (control characters, quotes, backslashes; UTF-8 above
    ASCII stays as is). Every byte is then copied to its place in the output, the special ones to
    the last position of their escape sequence, whose other bytes are filled in before them; value
    offsets shift by the escapes before them. No Python call per value, however many need escaping.
    """
    data_buffer = array.buffers()[2] if len(array) else None
    if data_buffer is None:
        return array
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
    first = int(offsets[0])
    data = np.frombuffer(data_buffer, dtype=np.uint8)[first : offsets[-1]]
    needs = data < 0x20
    needs |= data == 0x22
    needs |= data == 0x5C
    hits = np.flatnonzero(needs)
    if not hits.size:
        return array
    special = data[hits]
    long = np.flatnonzero(_LONG_ESCAPE[special])  # \u00XX (6 bytes) instead of \n-like (2): rare
    if long.size:
        extra = np.ones(hits.size, dtype=np.int64)
        extra[long] = 5
        shift = np.cumsum(extra)  # bytes added up to and including each escape
    else:
        shift = np.arange(1, hits.size + 1)
    last = hits + shift  # output position of each escape's last byte
    head = last - 1  # and of its first, a backslash
    head[long] -= 4
    out = np.empty(data.size + int(shift[-1]), dtype=np.uint8)
    copied = np.ones(out.size, dtype=bool)
    copied[head] = False
    out[head] = 0x5C
    for k in range(1, 5):
        copied[head[long] + k] = False
        out[head[long] + k] = _ESCAPE_BYTES[special[long], k]
    out[copied] = data
    out[last] = _LAST_BYTE[special]
    relative = offsets - first
    before = np.searchsorted(hits, relative, side="left")  # escapes before each value boundary
    added = np.concatenate(([0], shift))[before] if long.size else before
    validity = pc.is_valid(array).buffers()[1] if array.null_count else None
    return pa.Array.from_buffers(
        LARGE_TEXT, len(array), [validity, pa.py_buffer(relative + added), pa.py_buffer(out)], null_count=array.null_count
    )


def lines_of_array(lines: pa.Array) -> tuple[memoryview, np.ndarray]:
    """The bytes of a large_string array of lines (zero-copy) and each line's end offset."""
    if not len(lines):
        return memoryview(b""), np.zeros(0, dtype=np.int64)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=lines.offset * 8)
    data = memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]]
    return data, offsets[1:] - offsets[0]


def lines_of_bytes(lines: list[bytes]) -> tuple[memoryview, np.ndarray]:
    """The same for serialized lines without their newline."""
    if not lines:
        return memoryview(b""), np.zeros(0, dtype=np.int64)
    ends = np.cumsum(np.fromiter((len(x) + 1 for x in lines), dtype=np.int64, count=len(lines)))
    return memoryview(b"\n".join(lines) + b"\n"), ends
