"""JSON text as Arrow arrays: the vectorized escape writes what orjson writes, slices and nulls included,
and both line buffers have the same layout."""

from __future__ import annotations

import orjson
import pyarrow as pa

from batch_pipelines.requests.json_text import LARGE_TEXT, json_escape, lines_of_array, lines_of_bytes
from batch_pipelines_tests.support.frames import NASTY


def test_json_escape_equals_orjson_for_every_ascii_character_slices_and_nulls():
    every = "".join(chr(c) for c in range(128))
    values = [*NASTY, every, None, "plain", "\x00" * 3, "x\u0085\u2028y"]
    array = pa.array(values, LARGE_TEXT)
    for part in (array, array.slice(3), array.slice(2, 5), array.slice(len(values) - 1)):
        escaped = json_escape(part).to_pylist()
        expected = [None if v is None else orjson.dumps(v)[1:-1].decode() for v in part.to_pylist()]
        assert escaped == expected
    clean = pa.array(["no", "escapes"], LARGE_TEXT)
    assert json_escape(clean) is clean  # nothing to escape: the array itself, not a copy


def test_lines_of_array_and_of_bytes_give_one_buffer_and_line_ends():
    lines = [b'{"a":1}', b'{"b":"\\n"}', b"{}"]
    from_bytes, ends = lines_of_bytes(lines)
    joined = pa.array([line.decode() + "\n" for line in [b"skipped", *lines]], LARGE_TEXT).slice(1)
    from_array, array_ends = lines_of_array(joined)
    assert bytes(from_bytes) == bytes(from_array) == b"\n".join(lines) + b"\n"
    assert ends.tolist() == array_ends.tolist() == [8, 19, 22]
    empty, no_ends = lines_of_bytes([])
    assert bytes(empty) == b"" and len(no_ends) == 0
