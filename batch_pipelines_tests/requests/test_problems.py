"""Row problems: named by row, column and key in the error, counted, and quarantined row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batch_pipelines.profiles import custom_profile
from batch_pipelines.requests import MANIFEST_NAME, RequestManifest, RequestValidationError, build_request_files
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, codes, request_lines, small_chunks


def test_missing_values_are_named_by_row_and_column(tmp_path):
    df = pd.DataFrame(
        {
            "text": ["ok", None, "ok", np.nan, "ok"],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-01-04", "2024-01-05"]),
        },
        index=["a", "b", "c", "d", "e"],
    )
    spec = chat_spec(messages=[{"role": "user", "content": "{text} on {when:%Y-%m-%d}"}])
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, spec, tmp_path, profile=OPENAI)
    assert codes(exc) == {"missing_value": 3}
    text = str(exc.value)
    assert "3 of 5 rows cannot become requests for openai /v1/chat/completions (missing_value: 3)" in text
    assert "row 1 (key 'b'): 'text' is missing" in text and "row 2 (key 'c'): 'when' is missing" in text
    assert {(p.row, p.column) for p in exc.value.problems} == {(1, "text"), (2, "when"), (3, "text")}
    assert not list(tmp_path.iterdir())  # nothing left for upload


def test_duplicate_keys_fail_and_are_quarantined_all_together(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c", "d"]}, index=["k1", "k2", "k1", "k3"])
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, chat_spec(), tmp_path, profile=OPENAI)
    assert codes(exc) == {"duplicate_key": 2}
    manifest = build_request_files(df, chat_spec(), tmp_path, profile=OPENAI, policy="quarantine")
    assert [(r.row, r.key, r.custom_id, r.reasons) for r in manifest.rejected] == [
        (0, "k1", "k1", ["duplicate_key"]),
        (2, "k1", "k1", ["duplicate_key"]),
    ]
    assert [line["custom_id"] for line in request_lines(manifest)] == ["k2", "k3"]


def test_fail_lists_first_rows_counts_and_leaves_no_files(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
    df = pd.DataFrame({"text": ["ok" if i % 3 else None for i in range(40)]})
    df.loc[38, "text"] = "y" * 300
    (tmp_path / "shard-00007.jsonl").write_text("stale")
    profile = custom_profile("http://127.0.0.1:1", max_file_bytes=300)
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, chat_spec(), tmp_path, profile=profile)
    message = str(exc.value)
    assert message.startswith("15 of 40 rows cannot become requests for custom /v1/chat/completions (missing_value: 14, too_large: 1):")
    assert message.count("\n  row ") == 10 and message.endswith("... and 5 more rows")
    assert "row 0 (key 0): 'text' is missing" in message
    assert not list(tmp_path.iterdir())


def test_quarantine_accounts_for_every_row(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
    df = pd.DataFrame({"key": [f"r{i}" for i in range(10)], "text": ["t"] * 10})
    df.loc[[2, 7], "text"] = None
    df.loc[5, "key"] = None
    manifest = build_request_files(df, chat_spec(key_column="key"), tmp_path, profile=OPENAI, policy="quarantine")
    assert manifest.rows == 10 and manifest.requests == 7
    assert [(r.row, r.custom_id, r.columns) for r in manifest.rejected] == [(2, "r2", ["text"]), (5, None, []), (7, "r7", ["text"])]
    ids = manifest.read_ids()
    assert sorted(ids["row"].tolist() + [r.row for r in manifest.rejected]) == list(range(10))
    reread = RequestManifest.read(tmp_path / MANIFEST_NAME)
    assert reread == manifest and reread.rejected[1].reasons == ["missing_key"]
