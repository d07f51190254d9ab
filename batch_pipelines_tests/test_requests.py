"""Request files: specs, custom_ids, validation and both policies, sharding, determinism, escaping,
multimodal parts and structured output (the last accepted by the local service over HTTP)."""

from __future__ import annotations

import base64
import decimal
import hashlib
import json
import re
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel, Field, ValidationError

from batch_pipelines import requests as requests_module
from batch_pipelines.profiles import CUSTOM_ID_PATTERN, custom_profile, get_profile
from batch_pipelines.providers.openai_compatible import OpenAICompatibleProvider
from batch_pipelines.requests import (
    IDS_NAME,
    MANIFEST_NAME,
    SIZE_MARGIN,
    MediaFile,
    MediaPart,
    RequestManifest,
    RequestSpec,
    RequestValidationError,
    build_request_files,
    custom_ids,
    strict_json_schema,
)
from batch_pipelines_tests.conftest import wait_for_batch

OPENAI = get_profile("openai")
MOONSHOT = get_profile("moonshot")
CHAT = "/v1/chat/completions"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(30)


def chat_spec(**kw: Any) -> RequestSpec:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", [{"role": "system", "content": "Classify."}, {"role": "user", "content": "Text: {text}"}])
    return RequestSpec(**kw)


def lines(manifest: RequestManifest) -> list[dict[str, Any]]:
    return [orjson.loads(line) for shard in manifest.shards for line in shard.path.read_bytes().splitlines()]


def user_text(line: dict[str, Any]) -> Any:
    return line["body"]["messages"][-1]["content"]


def codes(exc: pytest.ExceptionInfo[RequestValidationError]) -> dict[str, int]:
    return exc.value.counts


@pytest.fixture
def small_chunks(monkeypatch):
    """Rows become lines a few at a time, so the test crosses many chunk boundaries."""
    monkeypatch.setattr(requests_module, "_FIRST_CHUNK_ROWS", 3)
    monkeypatch.setattr(requests_module, "_CHUNK_BYTES", 500)


# ---- spec --------------------------------------------------------------------------------------


def test_spec_needs_exactly_one_way_to_build_a_body():
    with pytest.raises(ValidationError, match="exactly one of"):
        RequestSpec(model="m")
    with pytest.raises(ValidationError, match="exactly one of"):
        RequestSpec(model="m", input_template="{a}", build_body=lambda row: {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_template": "a } b"}, "literal braces"),
        ({"input_template": "a {} b"}, "name a column"),
        ({"input_template": "{x:{w}}"}, "nested"),
        ({"input_template": "{x}", "body": {"model": "other"}}, "spec's own fields"),
        ({"messages": [{"role": "user", "content": "{x}"}], "endpoint": "/v1/embeddings"}, "use input_template"),
        ({"input_template": "{x}", "endpoint": "/v1/nope"}, "not one of"),
        ({"input_template": "{x}", "media": [MediaPart(column="img")], "endpoint": "/v1/embeddings"}, "media parts need"),
        ({"messages": [{"role": "system", "content": "{x}"}], "media": [MediaPart(column="img")]}, "user message"),
    ],
)
def test_spec_rejects_what_cannot_work(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RequestSpec(model="m", **kwargs)


def test_spec_columns_in_first_use_order():
    spec = chat_spec(
        messages=[{"role": "system", "content": "{b} {{literal}}"}, {"role": "user", "content": "{a} {b:>5} {c!r}"}],
        media=[MediaPart(column="img")],
    )
    assert spec.columns == ["b", "a", "c", "img"]


# ---- custom ids --------------------------------------------------------------------------------


def test_custom_ids_keep_keys_that_fit():
    ids = custom_ids(pd.Series(["a-1", "B_2", "x" * 64], index=[7, 8, 9]))
    assert ids.tolist() == ["a-1", "B_2", "x" * 64] and ids.index.tolist() == [7, 8, 9]
    assert custom_ids(pd.RangeIndex(3)).tolist() == ["0", "1", "2"]
    assert custom_ids(pd.Series([-5, 12], dtype="int64")).tolist() == ["-5", "12"]
    assert custom_ids(pd.Series([3.0, 4.0])).tolist() == ["3", "4"]  # integers a missing value made floats
    assert custom_ids(pd.Series([1, 2], dtype="Int64")).tolist() == ["1", "2"]


def test_custom_ids_hash_keys_that_do_not_fit_stably():
    keys = pd.Index(["order 17/a", "x" * 65, "東京", "line\nbreak", 1.5])
    ids = custom_ids(keys)
    digest = hashlib.sha256(b"order 17/a").hexdigest()[:24]
    assert ids["order 17/a"] == f"order_17_a-{digest}"  # the documented, reproducible form
    assert ids["東京"] == f"k-{hashlib.sha256('東京'.encode()).hexdigest()[:24]}"
    assert all(CUSTOM_ID_PATTERN.match(i) for i in ids)
    assert ids.tolist() == custom_ids(keys).tolist()  # stable
    assert ids.is_unique


def test_custom_ids_refuse_collisions_duplicates_and_missing_keys():
    with pytest.raises(RequestValidationError) as exc:
        custom_ids(pd.Series([5, "5", "ok"], dtype=object))
    assert codes(exc) == {"custom_id_collision": 2}
    hashed = custom_ids(pd.Index(["a b"]))["a b"]
    with pytest.raises(RequestValidationError) as exc:  # a natural key equal to another key's hashed form
        custom_ids(pd.Index(["a b", hashed]))
    assert codes(exc) == {"custom_id_collision": 2}
    with pytest.raises(RequestValidationError) as exc:
        custom_ids(pd.Series(["a", "a", None, "b"]))
    assert codes(exc) == {"duplicate_key": 2, "missing_key": 1}
    assert "row 0 (key 'a'): key occurs more than once" in str(exc.value)


def test_key_column_gives_custom_ids_and_id_map_joins_back(tmp_path):
    df = pd.DataFrame({"id": ["p 1", "p2", "p3"], "text": ["x", "y", "z"]}, index=[10, 20, 30])
    manifest = build_request_files(df, chat_spec(key_column="id"), tmp_path, profile=OPENAI)
    ids = manifest.read_ids()
    assert ids["key"].tolist() == ["p 1", "p2", "p3"] and ids["row"].tolist() == [0, 1, 2]
    assert ids["custom_id"].tolist() == [line["custom_id"] for line in lines(manifest)]
    assert ids["custom_id"].tolist() == custom_ids(df["id"]).tolist()


# ---- validation: the input as a whole ----------------------------------------------------------


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


# ---- validation: rows --------------------------------------------------------------------------


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
    assert [user_text(line) for line in lines(manifest)] == ["001|1.50|True|01.03.2024|7|café|1", "002|2.25|False|02.03.2024|1.10|plain|2"]


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
    assert [line["custom_id"] for line in lines(manifest)] == ["k2", "k3"]


def test_single_request_over_the_file_limit(tmp_path):
    profile = custom_profile("http://127.0.0.1:1", max_file_bytes=400)
    df = pd.DataFrame({"text": ["short", "x" * 500, "short too"]})
    with pytest.raises(RequestValidationError, match=r"row 1 \(key 1\): request is \d+ bytes, over the 380-byte budget"):
        build_request_files(df, chat_spec(), tmp_path, profile=profile)
    manifest = build_request_files(df, chat_spec(), tmp_path, profile=profile, policy="quarantine")
    assert manifest.requests == 2 and [r.reasons for r in manifest.rejected] == [["too_large"]]


def test_build_body_rows_are_checked(tmp_path):
    def body(row):
        if row["i"] == 1:
            raise KeyError("boom")
        if row["i"] == 2:
            return {"model": "other-model"}
        if row["i"] == 3:
            return {"temperature": 0.3}
        if row["i"] == 4:
            return {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": float("nan")}}
        if row["i"] == 5:
            return ["not", "a", "dict"]
        if row["i"] == 6:
            return {"messages": [], "extra": object()}
        return {"messages": [{"role": "user", "content": f"n={row['n']}"}], "seed": row["n"]}

    df = pd.DataFrame({"i": range(8), "n": np.arange(8, dtype=np.int64) * 10})
    spec = RequestSpec(model="kimi-k2.5", build_body=body)
    manifest = build_request_files(df, spec, tmp_path, profile=MOONSHOT, policy="quarantine")
    assert {r.row: r.reasons[0] for r in manifest.rejected} == {
        1: "build_body_error",
        2: "model_mismatch",
        3: "forbidden_param",
        4: "invalid_value",
        5: "build_body_error",
        6: "unserializable",
    }
    sent = lines(manifest)
    assert [line["body"] for line in sent] == [
        {"model": "kimi-k2.5", "messages": [{"role": "user", "content": f"n={n}"}], "seed": n} for n in (0, 70)
    ]
    assert "build_body raised KeyError: 'boom'" in manifest.rejected[0].message
    # another model is fine where the provider takes several per file
    assert build_request_files(df.iloc[[2]], RequestSpec(model="gpt-4o-mini", build_body=body), tmp_path, profile=OPENAI).requests == 1


def test_fail_lists_first_rows_counts_and_leaves_no_files(tmp_path, small_chunks):
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


def test_quarantine_accounts_for_every_row(tmp_path, small_chunks):
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


def test_all_rows_rejected_gives_a_manifest_without_shards(tmp_path):
    manifest = build_request_files(pd.DataFrame({"text": [None, None]}), chat_spec(), tmp_path, profile=OPENAI, policy="quarantine")
    assert manifest.shards == [] and manifest.requests == 0 and len(manifest.rejected) == 2
    assert manifest.ids_path is None and manifest.read_ids().empty


# ---- sharding ----------------------------------------------------------------------------------


def _fixed_rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i:04d}" for i in range(n)]}, index=[f"id{i:04d}" for i in range(n)])


def test_byte_limit_exactly_reached_stays_whole_one_over_splits(tmp_path):
    df = _fixed_rows(10)
    probe = build_request_files(df, chat_spec(), tmp_path / "probe", profile=OPENAI)
    total = probe.shards[0].bytes
    line = total // 10
    assert total == 10 * line  # every line has the same size, newline included
    exact = build_request_files(df, chat_spec(), tmp_path / "exact", profile=custom_profile("x", max_file_bytes=total), size_margin=0)
    assert [s.bytes for s in exact.shards] == [total]
    over = build_request_files(df, chat_spec(), tmp_path / "over", profile=custom_profile("x", max_file_bytes=total - 1), size_margin=0)
    assert [s.bytes for s in over.shards] == [9 * line, line]
    # the default margin keeps SIZE_MARGIN of the limit free
    margin = build_request_files(df, chat_spec(), tmp_path / "margin", profile=custom_profile("x", max_file_bytes=total))
    assert all(s.bytes <= total * (1 - SIZE_MARGIN) for s in margin.shards) and len(margin.shards) == 2


def test_request_limit_exactly_reached_stays_whole_one_over_splits(tmp_path):
    profile = custom_profile("x", max_requests_per_file=5)
    exact = build_request_files(_fixed_rows(5), chat_spec(), tmp_path / "exact", profile=profile)
    assert [s.rows for s in exact.shards] == [5]
    over = build_request_files(_fixed_rows(6), chat_spec(), tmp_path / "over", profile=profile)
    assert [s.rows for s in over.shards] == [5, 1]
    assert [(s.first_custom_id, s.last_custom_id) for s in over.shards] == [("id0000", "id0004"), ("id0005", "id0005")]
    smaller = build_request_files(_fixed_rows(6), chat_spec(), tmp_path / "smaller", profile=profile, max_requests_per_shard=2)
    assert [s.rows for s in smaller.shards] == [2, 2, 2]


def test_shards_respect_limits_across_chunks_and_record_everything(tmp_path, small_chunks):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"text": ["é\"\n" * int(k) for k in rng.integers(0, 80, 200)]})
    profile = custom_profile("x", max_file_bytes=2_000, max_requests_per_file=17)
    manifest = build_request_files(df, chat_spec(), tmp_path, profile=profile, size_margin=0)
    ids = manifest.read_ids()
    seen = []
    for index, shard in enumerate(manifest.shards):
        data = shard.path.read_bytes()
        assert len(data) == shard.bytes <= 2_000 and data.endswith(b"\n")
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        shard_ids = [orjson.loads(line)["custom_id"] for line in data.splitlines()]
        assert len(shard_ids) == shard.rows <= 17
        assert (shard.first_custom_id, shard.last_custom_id) == (shard_ids[0], shard_ids[-1])
        assert ids.loc[ids["shard"] == index, "custom_id"].tolist() == shard_ids
        seen += shard_ids
    assert seen == [str(i) for i in range(200)]
    # greedy: no shard could have taken the next shard's first line
    for shard, following in zip(manifest.shards, manifest.shards[1:]):
        first_line = following.path.read_bytes().split(b"\n")[0]
        assert shard.rows == 17 or shard.bytes + len(first_line) + 1 > 2_000


def test_embedding_inputs_limit(tmp_path):
    profile = custom_profile("x", max_embedding_inputs=5)
    df = pd.DataFrame({"texts": [["a", "b"], ["c", "d"], ["e", "f", "g"], ["h"], list("ijklmn")]})
    spec = RequestSpec(model="text-embedding-3-small", endpoint="/v1/embeddings", build_body=lambda row: {"input": row["texts"]})
    manifest = build_request_files(df, spec, tmp_path, profile=profile, policy="quarantine")
    assert [s.rows for s in manifest.shards] == [2, 2]  # 4 inputs, then 3 + 1
    assert [(r.row, r.reasons) for r in manifest.rejected] == [(4, ["too_large"])]
    assert "6 embedding inputs, over 5 per file" in manifest.rejected[0].message
    template = RequestSpec(model="text-embedding-3-small", endpoint="/v1/embeddings", input_template="{t}")
    counted = build_request_files(pd.DataFrame({"t": list("abcdefghijk")}), template, tmp_path / "t", profile=profile)
    assert [s.rows for s in counted.shards] == [5, 5, 1]


# ---- determinism, manifest, retries ------------------------------------------------------------


def test_same_rows_and_spec_give_identical_files_and_fingerprints(tmp_path):
    df = pd.DataFrame({"text": [f"t{i} \"q\" ü" for i in range(50)]}, index=[f"k {i}" for i in range(50)])
    profile = custom_profile("x", max_requests_per_file=20)
    one = build_request_files(df, chat_spec(), tmp_path / "one", profile=profile)
    two = build_request_files(df.copy(), chat_spec(), tmp_path / "two", profile=profile)
    assert [s.path.read_bytes() for s in one.shards] == [s.path.read_bytes() for s in two.shards]
    assert [s.fingerprint("openai", CHAT) for s in one.shards] == [s.fingerprint("openai", CHAT) for s in two.shards]
    assert (tmp_path / "one" / MANIFEST_NAME).read_bytes() == (tmp_path / "two" / MANIFEST_NAME).read_bytes()
    shard = one.shards[0]
    prints = {shard.fingerprint("openai", CHAT), shard.fingerprint("moonshot", CHAT), shard.fingerprint("openai", "/v1/responses")}
    assert len(prints) == 3
    assert shard.fingerprint("openai", CHAT) == hashlib.sha256(f"{shard.sha256}\nopenai\n{CHAT}\n1".encode()).hexdigest()


def test_chunking_does_not_change_the_files(tmp_path, monkeypatch):
    df = pd.DataFrame({"text": [f"row {i} " + "x" * (i % 37) for i in range(300)]})
    profile = custom_profile("x", max_file_bytes=9_000)
    whole = build_request_files(df, chat_spec(), tmp_path / "whole", profile=profile)
    monkeypatch.setattr(requests_module, "_FIRST_CHUNK_ROWS", 1)
    monkeypatch.setattr(requests_module, "_CHUNK_BYTES", 700)
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
    assert lines(subset)[0]["custom_id"] == first.read_ids()["custom_id"][2] and subset.attempt == 3


def test_manifest_round_trip_with_relative_paths(tmp_path):
    manifest = build_request_files(_fixed_rows(3), chat_spec(), tmp_path / "run", profile=OPENAI)
    stored = orjson.loads((tmp_path / "run" / MANIFEST_NAME).read_bytes())
    assert stored["shards"][0]["path"] == "shard-00000.jsonl" and stored["ids_path"] == IDS_NAME
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = RequestManifest.read(tmp_path / "moved" / MANIFEST_NAME)
    assert moved.shards[0].path == (tmp_path / "moved" / "shard-00000.jsonl").resolve()
    assert moved.read_ids()["custom_id"].tolist() == ["id0000", "id0001", "id0002"]
    assert moved.model_dump(exclude={"shards", "ids_path"}) == manifest.model_dump(exclude={"shards", "ids_path"})


def test_rebuild_replaces_files_of_an_earlier_build(tmp_path):
    build_request_files(_fixed_rows(6), chat_spec(), tmp_path, profile=custom_profile("x", max_requests_per_file=2))
    manifest = build_request_files(_fixed_rows(2), chat_spec(), tmp_path, profile=OPENAI)
    assert sorted(p.name for p in tmp_path.iterdir()) == [IDS_NAME, MANIFEST_NAME, "shard-00000.jsonl"]
    assert manifest.requests == 2


# ---- escaping and line shapes ------------------------------------------------------------------

NASTY = ['say "hi"', "back\\slash", "new\nline\r\n", "tab\tbell\x07nul\x00esc\x1b", "\u2028\u2029 seps", "東京 😀", "", "}{ {{x}}"]


def test_no_value_can_break_a_line_and_output_equals_orjson(tmp_path, small_chunks):
    keys = [f"k{i}\n\"'" for i in range(len(NASTY))]
    df = pd.DataFrame({"text": NASTY, "other": list(reversed(NASTY))}, index=keys)
    system = 'Rules: "quote" \\ back\nslash {{literal}}'
    spec = chat_spec(messages=[{"role": "system", "content": system}, {"role": "user", "content": "{text}|{other}|{text}"}])
    manifest = build_request_files(df, spec, tmp_path, profile=OPENAI)
    raw = manifest.shards[0].path.read_bytes()
    assert raw.count(b"\n") == len(NASTY)
    ids = custom_ids(df.index)
    for i, line in enumerate(raw.splitlines()):
        expected = {
            "custom_id": ids.iloc[i],
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": 'Rules: "quote" \\ back\nslash {literal}'},
                    {"role": "user", "content": f"{NASTY[i]}|{NASTY[-1 - i]}|{NASTY[i]}"},
                ],
            },
        }
        assert line == orjson.dumps(expected)  # byte-identical to orjson of the request dict
        assert json.loads(line) == expected  # and plain JSON agrees


def test_template_and_function_specs_write_the_same_bytes(tmp_path):
    df = pd.DataFrame({"text": NASTY})
    template = chat_spec(body={"max_tokens": 7})
    function = RequestSpec(
        model="gpt-4o-mini",
        body={"max_tokens": 7},
        build_body=lambda row: {"messages": [{"role": "system", "content": "Classify."}, {"role": "user", "content": f"Text: {row['text']}"}]},
    )
    a = build_request_files(df, template, tmp_path / "a", profile=OPENAI)
    b = build_request_files(df, function, tmp_path / "b", profile=OPENAI)
    assert a.shards[0].path.read_bytes() == b.shards[0].path.read_bytes()


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [("/v1/responses", "input"), ("/v1/embeddings", "input"), ("/v1/completions", "prompt"), ("/v1/moderations", "input")],
)
def test_input_template_goes_where_the_endpoint_wants_it(tmp_path, endpoint, field):
    spec = RequestSpec(model="m", endpoint=endpoint, input_template="Q: {q}", body={"user": "u1"})
    line = lines(build_request_files(pd.DataFrame({"q": ["why?"]}), spec, tmp_path, profile=OPENAI))[0]
    assert line["url"] == endpoint and line["body"] == {"model": "m", field: "Q: why?", "user": "u1"}


def test_input_template_on_chat_is_one_user_message(tmp_path):
    spec = RequestSpec(model="m", input_template="Q: {q}")
    line = lines(build_request_files(pd.DataFrame({"q": ["why?"]}), spec, tmp_path, profile=OPENAI))[0]
    assert line["body"]["messages"] == [{"role": "user", "content": "Q: why?"}]


# ---- structured output -------------------------------------------------------------------------


class Sentiment(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Evidence(BaseModel):
    quote: str
    weight: float = 1.0


class Verdict(BaseModel):
    label: Sentiment = Field(description="the overall sentiment")
    confidence: float
    note: Optional[str] = None
    evidence: list[Evidence]
    best: Evidence = Field(description="the strongest piece")


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


def test_strict_schema_closes_every_object_and_requires_every_field():
    schema = strict_json_schema(Verdict)
    objects = _objects(schema)
    assert len(objects) >= 2
    for node in objects:
        assert node["additionalProperties"] is False and node["required"] == list(node["properties"])
    assert schema["required"] == ["label", "confidence", "note", "evidence", "best"]
    assert "default" not in schema["properties"]["note"]
    best = schema["properties"]["best"]  # a $ref with a description: inlined
    assert "$ref" not in best and best["description"] == "the strongest piece" and best["additionalProperties"] is False


def test_models_strict_output_cannot_express_are_refused():
    class Loose(BaseModel):
        counts: dict[str, int]

    class Opaque(BaseModel):
        fn: Callable[[int], int]

    with pytest.raises(ValueError, match="free-form mapping"):
        strict_json_schema(Loose)
    with pytest.raises(ValueError, match="cannot become a JSON schema"):
        strict_json_schema(Opaque)
    with pytest.raises(ValidationError, match="free-form mapping"):
        chat_spec(output_model=Loose)
    with pytest.raises(ValidationError, match="output_model needs"):
        RequestSpec(model="m", endpoint="/v1/embeddings", input_template="{x}", output_model=Verdict)


def test_output_model_sets_response_format_or_text_format(tmp_path):
    df = pd.DataFrame({"text": ["good"]})
    chat = lines(build_request_files(df, chat_spec(output_model=Verdict), tmp_path / "c", profile=OPENAI))[0]
    assert chat["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "strict": True, "schema": strict_json_schema(Verdict)},
    }
    spec = RequestSpec(model="m", endpoint="/v1/responses", input_template="{text}", body={"text": {"verbosity": "low"}}, output_model=Verdict)
    responses = lines(build_request_files(df, spec, tmp_path / "r", profile=OPENAI))[0]
    assert responses["body"]["text"]["verbosity"] == "low"
    assert responses["body"]["text"]["format"]["name"] == "Verdict" and responses["body"]["text"]["format"]["strict"] is True


def test_local_service_accepts_structured_output_files(local_service, tmp_path):
    svc = local_service(profile="openai")
    df = pd.DataFrame({"text": [f"review {i}: \"great\"\nproduct" for i in range(30)]}, index=[f"rev {i}" for i in range(30)])
    profile = custom_profile(svc.base_url, name="openai", max_requests_per_file=12)
    manifest = build_request_files(df, chat_spec(output_model=Verdict), tmp_path / "req", profile=profile)
    assert len(manifest.shards) == 3
    ids = manifest.read_ids().set_index("custom_id")
    with OpenAICompatibleProvider("openai", api_key=svc.api_key, base_url=svc.base_url, max_retries=0) as provider:
        verdicts = {}
        for shard in manifest.shards:
            batch = provider.submit(shard.path, endpoint=CHAT, metadata={"fingerprint": shard.fingerprint("openai", CHAT)[:64]})
            done = wait_for_batch(svc.engine, batch.id)
            assert done["status"] == "completed" and done["request_counts"] == {"total": shard.rows, "completed": shard.rows, "failed": 0}
            files = provider.download_results(provider.retrieve_batch(batch.id), tmp_path / "out")
            assert files.error_path is None
            for line in files.output_path.read_bytes().splitlines():
                result = orjson.loads(line)
                content = result["response"]["body"]["choices"][0]["message"]["content"]
                verdicts[ids.loc[result["custom_id"], "key"]] = Verdict.model_validate_json(content)
    assert sorted(verdicts) == sorted(df.index)


# ---- multimodal --------------------------------------------------------------------------------


def _image_frame(tmp_path: Path) -> pd.DataFrame:
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "photo.bin").write_bytes(b"\xff\xd8\xff" + bytes(20))  # JPEG by its magic bytes
    return pd.DataFrame(
        {
            "text": ["a", "b", "c", "d", "e"],
            "img": pd.Series(
                [str(tmp_path / "cat.png"), tmp_path / "photo.bin", PNG, "https://example.com/x.png", f"file://{tmp_path / 'cat.png'}"],
                dtype=object,
            ),
        }
    )


def test_media_as_data_urls(tmp_path):
    df = _image_frame(tmp_path)
    spec = chat_spec(media=[MediaPart(column="img", detail="low")])
    sent = lines(build_request_files(df, spec, tmp_path / "req", profile=OPENAI))
    png_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    jpeg_url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff" + bytes(20)).decode()
    assert [user_text(line)[0]["image_url"]["url"] for line in sent] == [png_url, jpeg_url, png_url, "https://example.com/x.png", png_url]
    assert user_text(sent[0]) == [
        {"type": "image_url", "image_url": {"url": png_url, "detail": "low"}},
        {"type": "text", "text": "Text: a"},
    ]
    assert sent[0]["body"]["messages"][0] == {"role": "system", "content": "Classify."}


def test_media_as_file_references_through_the_uploader(tmp_path):
    df = _image_frame(tmp_path)
    uploads: list[MediaFile] = []

    def upload(media: MediaFile) -> str:
        uploads.append(media)
        return f"ms://file-{len(uploads)}"

    spec = chat_spec(model="kimi-k2.5", media=[MediaPart(column="img", transport="file")])
    manifest = build_request_files(df, spec, tmp_path / "req", profile=MOONSHOT, upload_media=upload)
    urls = [user_text(line)[0]["image_url"]["url"] for line in lines(manifest)]
    assert urls == ["ms://file-1", "ms://file-2", "ms://file-1", "https://example.com/x.png", "ms://file-1"]
    assert [(u.kind, u.mime_type, u.name) for u in uploads] == [("image", "image/png", "cat.png"), ("image", "image/jpeg", "photo.bin")]
    assert uploads[0].sha256 == hashlib.sha256(PNG).hexdigest() and uploads[0].data == PNG
    assert manifest.media_refs == {uploads[0].sha256: "ms://file-1", uploads[1].sha256: "ms://file-2"}
    # a retry hands the references back: nothing is uploaded again
    build_request_files(df, spec, tmp_path / "retry", profile=MOONSHOT, upload_media=upload, media_refs=manifest.media_refs, attempt=2)
    assert len(uploads) == 2


def test_nothing_is_uploaded_once_the_build_must_fail(tmp_path):
    df = _image_frame(tmp_path)
    df.loc[4, "text"] = None  # known before any line is built
    calls: list[MediaFile] = []
    spec = chat_spec(media=[MediaPart(column="img", transport="file")])
    with pytest.raises(RequestValidationError) as exc:
        build_request_files(df, spec, tmp_path / "req", profile=OPENAI, upload_media=lambda m: calls.append(m) or "ms://x")
    assert calls == [] and codes(exc) == {"missing_value": 1}
    refs: dict[str, str] = {}
    df.loc[4, "text"] = "ok"
    df.loc[3, "img"] = str(tmp_path / "gone.png")  # found only while building lines, after uploads began
    with pytest.raises(RequestValidationError, match="cannot read"):
        build_request_files(df, spec, tmp_path / "req", profile=OPENAI, upload_media=lambda m: f"ms://{m.sha256[:8]}", media_refs=refs)
    assert sorted(refs.values()) == sorted(f"ms://{h[:8]}" for h in {hashlib.sha256(PNG).hexdigest(), hashlib.sha256(b"\xff\xd8\xff" + bytes(20)).hexdigest()})


def test_auto_transport_uploads_large_or_reused_media(tmp_path):
    big = b"\x89PNG\r\n\x1a\n" + bytes(5_000)
    small = b"\x89PNG\r\n\x1a\n" + b"small"
    df = pd.DataFrame({"text": list("abcd"), "img": pd.Series([big, small, PNG, PNG], dtype=object)})
    refs = iter(["ms://big", "ms://reused"])
    spec = chat_spec(media=[MediaPart(column="img", transport="auto", inline_max_bytes=1_000)])
    manifest = build_request_files(df, spec, tmp_path, profile=OPENAI, upload_media=lambda media: next(refs))
    urls = [user_text(line)[0]["image_url"]["url"] for line in lines(manifest)]
    assert urls == ["ms://big", "data:image/png;base64," + base64.b64encode(small).decode(), "ms://reused", "ms://reused"]


def test_video_parts_and_responses_images(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(MP4)
    df = pd.DataFrame({"text": ["a"], "clip": [str(tmp_path / "clip.mp4")], "img": [PNG]})
    video = chat_spec(model="kimi-k2.5", media=[MediaPart(column="clip", kind="video")])
    part = user_text(lines(build_request_files(df, video, tmp_path / "v", profile=MOONSHOT))[0])[0]
    assert part == {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(MP4).decode()}}
    spec = RequestSpec(model="m", endpoint="/v1/responses", input_template="Describe {text}", media=[MediaPart(column="img")])
    line = lines(build_request_files(df, spec, tmp_path / "r", profile=OPENAI))[0]
    assert line["body"]["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
                {"type": "input_text", "text": "Describe a"},
            ],
        }
    ]


def test_media_problems_are_row_problems(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(MP4)
    (tmp_path / "notes.txt").write_bytes(b"hello")
    df = pd.DataFrame(
        {"text": list("abcde"), "img": pd.Series([PNG, str(tmp_path / "gone.png"), str(tmp_path / "clip.mp4"), b"??", 42], dtype=object)}
    )
    manifest = build_request_files(df, chat_spec(media=[MediaPart(column="img")]), tmp_path / "req", profile=OPENAI, policy="quarantine")
    assert manifest.requests == 1
    messages = {r.row: r.message for r in manifest.rejected}
    assert "cannot read" in messages[1] and "is video/mp4, not an image" in messages[2]
    assert "cannot tell the media type" in messages[3] and "int is not a path, URL or bytes" in messages[4]
    assert all(r.reasons == ["media_error"] for r in manifest.rejected)
    with pytest.raises(RequestValidationError, match="pass upload_media"):
        build_request_files(df, chat_spec(media=[MediaPart(column="img", transport="file")]), tmp_path / "x", profile=OPENAI)


def test_local_service_accepts_media_file_references(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    (tmp_path / "cat.png").write_bytes(PNG)
    df = pd.DataFrame({"text": ["first", "second"], "img": [str(tmp_path / "cat.png")] * 2})
    spec = chat_spec(model="kimi-k2.5", media=[MediaPart(column="img", transport="file")])
    with OpenAICompatibleProvider("moonshot", api_key=svc.api_key, base_url=svc.base_url, max_retries=0) as provider:

        def upload(media: MediaFile) -> str:  # what the provider layer supplies: upload once, reference by id
            path = tmp_path / media.name
            path.write_bytes(media.data)
            return f"ms://{provider.upload_file(path, purpose=media.kind).id}"

        manifest = build_request_files(df, spec, tmp_path / "req", profile=MOONSHOT, upload_media=upload)
        (ref,) = manifest.media_refs.values()
        assert re.fullmatch(r"ms://\S+", ref)
        batch = provider.submit(manifest.shards[0].path, endpoint=CHAT)
        done = wait_for_batch(svc.engine, batch.id)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 2
