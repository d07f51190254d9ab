"""The manifest: written with relative paths, read back from wherever the folder moved; no shards, no id map."""

from __future__ import annotations

import orjson
import pandas as pd

from batch_pipelines.requests import IDS_NAME, MANIFEST_NAME, RequestManifest, build_request_files
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, fixed_rows


def test_manifest_round_trip_with_relative_paths(tmp_path):
    manifest = build_request_files(fixed_rows(3), chat_spec(), tmp_path / "run", profile=OPENAI)
    stored = orjson.loads((tmp_path / "run" / MANIFEST_NAME).read_bytes())
    assert stored["shards"][0]["path"] == "shard-00000.jsonl" and stored["ids_path"] == IDS_NAME
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = RequestManifest.read(tmp_path / "moved" / MANIFEST_NAME)
    assert moved.shards[0].path == (tmp_path / "moved" / "shard-00000.jsonl").resolve()
    assert moved.read_ids()["custom_id"].tolist() == ["id0000", "id0001", "id0002"]
    assert moved.model_dump(exclude={"shards", "ids_path"}) == manifest.model_dump(exclude={"shards", "ids_path"})


def test_all_rows_rejected_gives_a_manifest_without_shards(tmp_path):
    manifest = build_request_files(pd.DataFrame({"text": [None, None]}), chat_spec(), tmp_path, profile=OPENAI, policy="quarantine")
    assert manifest.shards == [] and manifest.requests == 0 and len(manifest.rejected) == 2
    assert manifest.ids_path is None and manifest.read_ids().empty
