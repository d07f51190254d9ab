"""custom_ids: keys that fit kept, others hashed stably, collisions, duplicates and missing keys refused."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from batch_pipelines.profiles import CUSTOM_ID_PATTERN
from batch_pipelines.requests import RequestValidationError, build_request_files, custom_ids
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, codes, request_lines


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
    assert ids["custom_id"].tolist() == [line["custom_id"] for line in request_lines(manifest)]
    assert ids["custom_id"].tolist() == custom_ids(df["id"]).tolist()


@pytest.mark.parametrize("policy", ["fail", "quarantine"])
def test_keys_python_cannot_encode_or_arrow_cannot_hold_are_named_not_raised(tmp_path, policy):
    df = pd.DataFrame({"key": pd.Series(["fine", "a\ud800", 2**70], dtype=object), "text": ["x", "y", "z"]})
    spec = chat_spec(key_column="key")
    if policy == "fail":
        with pytest.raises(RequestValidationError) as exc:
            build_request_files(df, spec, tmp_path, profile=OPENAI, policy=policy)
        assert codes(exc) == {"invalid_key": 1} and "row 1 (key 'a\\\\ud800')" in str(exc.value)
        return
    manifest = build_request_files(df, spec, tmp_path, profile=OPENAI, policy=policy)
    assert [(r.row, r.reasons) for r in manifest.rejected] == [(1, ["invalid_key"])]
    assert sorted(manifest.read_ids()["custom_id"]) == [str(2**70), "fine"]  # a big integer is a fine key
