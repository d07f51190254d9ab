"""Each request line's content fingerprint, in the id map beside its custom_id."""

from __future__ import annotations

import pandas as pd
import xxhash

from batch_pipelines.profiles import get_profile
from batch_pipelines.requests import FINGERPRINT_COLUMN, RequestSpec, build_request_files
from batch_pipelines_tests.support.request_files import read_jsonl

OPENAI = get_profile("openai")
SPEC = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "Classify: {text}"}], key_column="id")


def _fingerprints(tmp_path, frame, spec=SPEC, name="out", **options):
    manifest = build_request_files(frame, spec, tmp_path / name, profile=OPENAI, **options)
    ids = manifest.read_ids()
    return dict(zip(ids["custom_id"], ids[FINGERPRINT_COLUMN])), manifest


def test_the_fingerprint_hashes_the_line_without_its_custom_id(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    prints, manifest = _fingerprints(tmp_path, frame, max_requests_per_shard=1)
    assert len(manifest.shards) == 2
    for shard in manifest.shards:
        [line] = read_jsonl(shard.path)
        raw = shard.path.read_bytes().rstrip(b"\n")
        rest = raw[len(f'{{"custom_id":"{line["custom_id"]}"'.encode()) :]
        assert rest.startswith(b',"method":"POST"')
        assert prints[line["custom_id"]] == xxhash.xxh3_128_hexdigest(rest)


def test_same_request_same_fingerprint_and_any_change_another(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": ["same", "same", "other"]})
    prints, _ = _fingerprints(tmp_path, frame)
    assert prints["a"] == prints["b"] != prints["c"]  # identical requests share it, whatever their key
    other_model, _ = _fingerprints(tmp_path, frame, SPEC.model_copy(update={"model": "gpt-4o"}), name="model")
    other_prompt, _ = _fingerprints(
        tmp_path, frame, SPEC.model_copy(update={"messages": [{"role": "user", "content": "Label: {text}"}]}), name="prompt"
    )
    other_body, _ = _fingerprints(tmp_path, frame, SPEC.model_copy(update={"body": {"max_tokens": 5}}), name="body")
    for changed in (other_model, other_prompt, other_body):
        assert not set(changed.values()) & set(prints.values())


def test_a_function_of_the_row_and_a_template_agree_on_the_same_request(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    from_template, _ = _fingerprints(tmp_path, frame, name="template")
    built = RequestSpec(
        model="gpt-4o-mini", key_column="id",
        build_body=lambda row: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Classify: {row['text']}"}]},
    )  # fmt: skip
    from_function, _ = _fingerprints(tmp_path, frame, built, name="function")
    assert from_template == from_function
