"""Template placeholders: cells become text where the text means something, and are refused otherwise."""

from __future__ import annotations

import decimal

import numpy as np
import pandas as pd
import pytest

from batch_pipelines.requests import RequestValidationError, build_request_files
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, request_lines, user_text


def test_scalars_become_text_where_meaningful(tmp_path):
    df = pd.DataFrame(
        {
            "n": np.array([1, 2], dtype=np.int64),
            "price": [1.5, 2.25],
            "flag": [True, False],
            "day": pd.to_datetime(["2024-03-01", "2024-03-02"]),
            "mixed": pd.Series([np.int32(7), decimal.Decimal("1.10")], dtype=object),
            "raw": pd.Series([b"caf\xc3\xa9", "plain"], dtype=object),
        }
    )
    template = "{n:03d}|{price:.2f}|{flag}|{day:%d.%m.%Y}|{mixed}|{raw}|{n!r}"
    manifest = build_request_files(df, chat_spec(messages=[{"role": "user", "content": template}]), tmp_path, profile=OPENAI)
    assert [user_text(line) for line in request_lines(manifest)] == ["001|1.50|True|01.03.2024|7|café|1", "002|2.25|False|02.03.2024|1.10|plain|2"]


def test_values_without_text_form_are_rejected(tmp_path):
    df = pd.DataFrame(
        {
            "text": pd.Series(["ok", {"a": 1}, "ok", b"\xff\xfe", "bad \ud800 surrogate", "ok"], dtype=object),
            "x": [1.0, 2.0, float("inf"), 4.0, 5.0, 6.0],
        }
    )
    spec = chat_spec(messages=[{"role": "user", "content": "{text} {x} {x:d}"}])
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, spec, tmp_path, profile=OPENAI)
    by_row = {p.row: (p.code, p.column) for p in exc.value.problems}
    assert by_row[1] == ("invalid_value", "text") and by_row[3] == ("invalid_utf8", "text")
    assert by_row[4] == ("invalid_utf8", "text") and by_row[2] == ("invalid_value", "x")
    assert "has no text form" in str(exc.value) and "cannot format 1.0 with 'd'" in str(exc.value)


def test_an_unknown_conversion_is_refused_when_the_spec_is_made():
    from batch_pipelines.requests import RequestSpec

    with pytest.raises(ValueError, match=r"\{text!z\} is not a conversion \(use !r, !s, !a\)"):
        RequestSpec(model="m", messages=[{"role": "user", "content": "{text!z}"}])
