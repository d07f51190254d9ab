"""The source digest tells whether the request files were built from exactly this source and spec."""

from __future__ import annotations

import pandas as pd

from batch_pipelines.profiles import PROFILES
from batch_pipelines.requests import RequestSpec, source_digest

SPEC = RequestSpec(model="m", messages=[{"role": "user", "content": "{text}"}], key_column="key")
OPENAI = PROFILES["openai"]


def _frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"k{i}" for i in range(len(texts))], "text": texts, "other": range(len(texts))})


def test_same_source_and_spec_same_digest_any_change_another():
    digest = source_digest(_frame(["a", "b"]), SPEC, OPENAI)
    assert digest is not None and digest == source_digest(_frame(["a", "b"]), SPEC, OPENAI)
    assert source_digest(_frame(["a", "c"]), SPEC, OPENAI) != digest
    assert source_digest(_frame(["a", "b"]), SPEC.model_copy(update={"model": "n"}), OPENAI) != digest
    assert source_digest(_frame(["a", "b"]), SPEC, PROFILES["moonshot"]) != digest
    # A column no template reads does not count; a slice of equal values is judged by its values' window.
    assert source_digest(_frame(["a", "b"]).assign(other=[7, 8]), SPEC, OPENAI) == digest
    assert source_digest(_frame(["x", "a", "b"]).iloc[1:].reset_index(drop=True), SPEC, OPENAI) != source_digest(_frame(["x", "a"]).iloc[:2], SPEC, OPENAI)


def test_a_function_spec_has_no_digest():
    spec = RequestSpec(model="m", build_body=lambda row: {"messages": [{"role": "user", "content": row["text"]}]}, key_column="key")
    assert source_digest(_frame(["a"]), spec, OPENAI) is None
