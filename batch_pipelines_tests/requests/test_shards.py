"""Shards: byte, request and embedding-input limits reached exactly or split, greedy cuts across chunks,
identical files and fingerprints for the same rows."""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pandas as pd

from batch_pipelines.profiles import custom_profile
from batch_pipelines.requests import MANIFEST_NAME, SIZE_MARGIN, RequestSpec, build_request_files
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, fixed_rows, small_chunks
from batch_pipelines_tests.support.request_files import CHAT


def test_byte_limit_exactly_reached_stays_whole_one_over_splits(tmp_path):
    df = fixed_rows(10)
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
    exact = build_request_files(fixed_rows(5), chat_spec(), tmp_path / "exact", profile=profile)
    assert [s.rows for s in exact.shards] == [5]
    over = build_request_files(fixed_rows(6), chat_spec(), tmp_path / "over", profile=profile)
    assert [s.rows for s in over.shards] == [5, 1]
    assert [(s.first_custom_id, s.last_custom_id) for s in over.shards] == [("id0000", "id0004"), ("id0005", "id0005")]
    smaller = build_request_files(fixed_rows(6), chat_spec(), tmp_path / "smaller", profile=profile, max_requests_per_shard=2)
    assert [s.rows for s in smaller.shards] == [2, 2, 2]


def test_shards_respect_limits_across_chunks_and_record_everything(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
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
