"""A build sends each distinct request once and holds back those already answered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from batch_pipelines.profiles import PROFILES
from batch_pipelines.requests import HELD_BACK, RequestSpec, SendOnce, build_request_files
from batch_pipelines_tests.support.request_files import read_jsonl

SPEC = RequestSpec(model="m", messages=[{"role": "user", "content": "{text}"}], key_column="key")


def _frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"k{i}" for i in range(len(texts))], "text": texts})


def test_repeated_requests_are_sent_once_and_kept_in_the_id_map(tmp_path):
    df = _frame(["a", "b", "a", "c", "a", "b"])
    manifest = build_request_files(df, SPEC, tmp_path, profile=PROFILES["openai"], send_once=SendOnce())
    assert (manifest.requests, manifest.held_back, manifest.rows) == (3, 3, 6)
    lines = [line for shard in manifest.shards for line in read_jsonl(shard.path)]
    assert [line["custom_id"] for line in lines] == ["k0", "k1", "k3"]
    ids = manifest.read_ids().set_index("custom_id")
    assert ids.loc[["k2", "k4", "k5"], "shard"].tolist() == [HELD_BACK] * 3
    assert ids.loc["k2", "request_fingerprint"] == ids.loc["k0", "request_fingerprint"]


def test_answered_requests_are_held_back_even_when_repeated_over_chunks(tmp_path):
    first = build_request_files(_frame(["x", "y"]), SPEC, tmp_path / "one", profile=PROFILES["openai"])
    answered = set(first.read_ids()["request_fingerprint"])
    lookup = SendOnce(lambda prints: np.array([p in answered for p in prints.to_pylist()]))
    texts = [f"t{i % 300}" for i in range(2000)] + ["x", "y"]  # more rows than one chunk
    manifest = build_request_files(_frame(texts), SPEC, tmp_path / "two", profile=PROFILES["openai"], send_once=lookup)
    assert manifest.requests == 300 and manifest.held_back == 1702
    held = manifest.read_ids()
    assert (held["shard"] == HELD_BACK).sum() == 1702 and held["row"].is_unique and len(held) == 2002


def test_without_send_once_every_row_is_sent(tmp_path):
    manifest = build_request_files(_frame(["a", "a"]), SPEC, tmp_path, profile=PROFILES["openai"])
    assert (manifest.requests, manifest.held_back) == (2, 0)
    p, q = "a" * 32, "b" * 32
    assert SendOnce().hold_back(pa.array([p, p, q])).tolist() == [False, True, False]
