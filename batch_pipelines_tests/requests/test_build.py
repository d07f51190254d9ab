"""build_request_files: input-wide problems under either policy, files within the file limit, chunking,
retries and rebuilds."""

from __future__ import annotations

import pandas as pd
import pytest

from batch_pipelines.profiles import custom_profile
from batch_pipelines.requests import IDS_NAME, MANIFEST_NAME, RequestSpec, RequestValidationError, build_request_files, check_request_rows
from batch_pipelines_tests.support.frames import (
    MOONSHOT,
    OPENAI,
    chat_spec,
    codes,
    fixed_rows,
    request_lines,
    small_chunks,
)
from batch_pipelines_tests.support.request_files import CHAT


def test_whole_input_problems_raise_under_either_policy(tmp_path):
    df = pd.DataFrame({"text": ["a"]})
    cases = [
        (pd.DataFrame({"text": pd.Series([], dtype="str")}), chat_spec(), OPENAI, "empty_input"),
        (df, RequestSpec(model="kimi-k2.5", endpoint="/v1/embeddings", input_template="{text}"), MOONSHOT, "endpoint_not_allowed"),
        (df, chat_spec(messages=[{"role": "user", "content": "{text} {missing}"}]), OPENAI, "missing_column"),
        (df, chat_spec(key_column="nope"), OPENAI, "missing_column"),
        (df, chat_spec(model="kimi-k2.5", body={"temperature": 0.2, "top_p": 1}), MOONSHOT, "forbidden_param"),
        (df, chat_spec(body={"temperature": float("nan")}), OPENAI, "unserializable_body"),
        (df, chat_spec(body={"stop": {1, 2}}), OPENAI, "unserializable_body"),
    ]
    for frame, spec, profile, code in cases:
        for policy in ("fail", "quarantine"):
            with pytest.raises(RequestValidationError) as exc:
                build_request_files(frame, spec, tmp_path, profile=profile, policy=policy)
            assert code in codes(exc), (code, str(exc.value))
    assert not list(tmp_path.iterdir())


def test_forbidden_param_message_names_the_params(tmp_path):
    spec = chat_spec(model="kimi-k2.5", body={"temperature": 0.2, "max_tokens": 5})
    with pytest.raises(RequestValidationError, match=r"rejects \['temperature'\] for model 'kimi-k2.5'"):
        build_request_files(pd.DataFrame({"text": ["a"]}), spec, tmp_path, profile=MOONSHOT)
    assert build_request_files(pd.DataFrame({"text": ["a"]}), chat_spec(model="kimi-k2.5", body={"max_tokens": 5}), tmp_path, profile=MOONSHOT).requests == 1


def test_single_request_over_the_file_limit(tmp_path):
    profile = custom_profile("http://127.0.0.1:1", max_file_bytes=400)
    df = pd.DataFrame({"text": ["short", "x" * 500, "short too"]})
    with pytest.raises(RequestValidationError, match=r"row 1 \(key 1\): request is \d+ bytes, over the 380-byte budget"):
        build_request_files(df, chat_spec(), tmp_path, profile=profile)
    manifest = build_request_files(df, chat_spec(), tmp_path, profile=profile, policy="quarantine")
    assert manifest.requests == 2 and [r.reasons for r in manifest.rejected] == [["too_large"]]


def test_the_check_raises_what_the_build_would_and_writes_nothing(tmp_path, monkeypatch):
    profile = custom_profile("http://127.0.0.1:1", max_file_bytes=400)
    bad = pd.DataFrame({"text": ["short", "x" * 500, None]})
    with pytest.raises(RequestValidationError) as built:
        build_request_files(bad, chat_spec(), tmp_path / "built", profile=profile)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # where a check with no folder could write

    with pytest.raises(RequestValidationError) as checked:
        check_request_rows(bad, chat_spec(), profile=profile)
    check_request_rows(bad.iloc[[0]], chat_spec(), profile=profile)  # a good table: no error
    check_request_rows(bad, chat_spec(), profile=profile, policy="quarantine")  # bad rows left out: no error

    assert str(checked.value) == str(built.value) and codes(checked) == codes(built) == {"too_large": 1, "missing_value": 1}
    assert not list(here.iterdir())


def test_chunking_does_not_change_the_files(tmp_path, monkeypatch):
    df = pd.DataFrame({"text": [f"row {i} " + "x" * (i % 37) for i in range(300)]})
    profile = custom_profile("x", max_file_bytes=9_000)
    whole = build_request_files(df, chat_spec(), tmp_path / "whole", profile=profile)
    small_chunks(monkeypatch, first_rows=1, chunk_bytes=700)
    pieces = build_request_files(df, chat_spec(), tmp_path / "pieces", profile=profile)
    assert len(whole.shards) > 1
    assert [s.sha256 for s in pieces.shards] == [s.sha256 for s in whole.shards]


def test_retry_keeps_custom_ids_and_gets_new_fingerprints(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c"]}, index=["x 1", "x 2", "x 3"])
    first = build_request_files(df, chat_spec(), tmp_path / "a1", profile=OPENAI)
    again = build_request_files(df, chat_spec(), tmp_path / "a2", profile=OPENAI, attempt=2)
    assert again.shards[0].sha256 == first.shards[0].sha256  # same rows, same bytes...
    assert again.shards[0].fingerprint("openai", CHAT) != first.shards[0].fingerprint("openai", CHAT)  # ...new batch
    subset = build_request_files(df.iloc[[2]], chat_spec(), tmp_path / "a3", profile=OPENAI, attempt=3)
    assert request_lines(subset)[0]["custom_id"] == first.read_ids()["custom_id"][2] and subset.attempt == 3


def test_rebuild_replaces_files_of_an_earlier_build(tmp_path):
    build_request_files(fixed_rows(6), chat_spec(), tmp_path, profile=custom_profile("x", max_requests_per_file=2))
    manifest = build_request_files(fixed_rows(2), chat_spec(), tmp_path, profile=OPENAI)
    assert sorted(p.name for p in tmp_path.iterdir()) == [IDS_NAME, MANIFEST_NAME, "shard-00000.jsonl"]
    assert manifest.requests == 2
