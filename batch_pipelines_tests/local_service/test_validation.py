"""Each validation rule of the posed-as provider: create-time 400s and line-level failures."""

from __future__ import annotations

import io

import openai
import pytest

from batch_pipelines.local_service import ServiceError
from batch_pipelines.profiles import custom_profile
from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.engine import submit
from batch_pipelines_tests.support.request_files import CHAT, chat_line, write_lines
from batch_pipelines_tests.support.waiting import wait_for_batch


def _upload(svc, tmp_path, lines, name="requests.jsonl"):
    return svc.engine.create_file(name, "batch", write_lines(tmp_path / "f.jsonl", lines))["id"]


# ---- create-time errors: HTTP 400 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "window", "ok"),
    [
        ("moonshot", "12h", True),
        ("moonshot", "3d", True),
        ("moonshot", "7d", True),
        ("moonshot", "11h", False),
        ("moonshot", "8d", False),
        ("moonshot", "soon", False),
        ("openai", "24h", True),
        ("openai", "48h", False),
    ],
)
def test_completion_window_within_the_profile(local_service, tmp_path, profile, window, ok):
    svc = local_service(profile=profile)
    file_id = _upload(svc, tmp_path, [chat_line(0)])
    client = sdk(svc)
    if ok:
        assert client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window=window).completion_window == window
    else:
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window=window)
        assert info.value.body["param"] == "completion_window"


def test_endpoint_must_be_one_the_profile_offers(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    file_id = _upload(svc, tmp_path, [chat_line(0)])
    with pytest.raises(openai.BadRequestError) as info:
        sdk(svc).batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    assert info.value.body["param"] == "endpoint"


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ],
    ids=["17-pairs", "long-key", "long-value"],
)
def test_metadata_limits(local_service, tmp_path, metadata):
    svc = local_service()
    file_id = _upload(svc, tmp_path, [chat_line(0)])
    with pytest.raises(openai.BadRequestError) as info:
        sdk(svc).batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata=metadata)
    assert info.value.body["param"] == "metadata"
    at_limit = {f"k{i}": "v" * 512 for i in range(15)} | {"k" * 64: "v"}
    assert sdk(svc).batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata=at_limit).metadata == at_limit


def test_input_file_must_exist_and_be_a_batch_file(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    client = sdk(svc)
    for missing in ("file-" + "0" * 24, "../../etc/passwd"):
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(input_file_id=missing, endpoint=CHAT, completion_window="24h")
        assert info.value.body["param"] == "input_file_id"
    image = svc.engine.create_file("a.png", "image", io.BytesIO(b"png"))
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=image["id"], endpoint=CHAT, completion_window="24h")


def test_batch_files_need_a_jsonl_name_and_content(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    client = sdk(svc)
    with pytest.raises(openai.BadRequestError, match=".jsonl"):
        client.files.create(file=("requests.json", b'{"a": 1}\n'), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("requests.jsonl", b""), purpose="batch")
    assert info.value.body["code"] == "empty_file"


def test_file_size_limit_of_the_profile(local_service, tmp_path):
    svc = local_service(profile=custom_profile("http://x/v1", max_file_bytes=1000))
    with pytest.raises(openai.APIStatusError) as info:
        sdk(svc).files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
    assert info.value.status_code == 413
    with pytest.raises(ServiceError) as direct:
        svc.engine.create_file("big.jsonl", "batch", io.BytesIO(b"x" * 1001))
    assert direct.value.status_code == 413
    assert svc.engine.create_file("ok.jsonl", "batch", io.BytesIO(b"x" * 1000))["bytes"] == 1000
    assert list((svc.data_dir / "tmp").iterdir()) == []


# ---- line-level errors: the batch goes failed ------------------------------------------------


def _failed(svc, tmp_path, lines, profile_window="24h"):
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, lines, window=profile_window)["id"])
    assert batch["status"] == "failed", batch
    assert batch["failed_at"] and batch["in_progress_at"] is None and batch["output_file_id"] is None
    return [(e["code"], e["line"], e["param"]) for e in batch["errors"]["data"]], batch


def test_invalid_json_lines_are_named(local_service, tmp_path):
    svc = local_service()
    errors, batch = _failed(svc, tmp_path, [chat_line(0), b"{not json", b"[1, 2]", chat_line(3)])
    assert errors == [("invalid_json_line", 2, None), ("invalid_json_line", 3, None)]
    assert "Line 2" in batch["errors"]["data"][0]["message"]


@pytest.mark.parametrize("field", ["custom_id", "method", "url", "body"])
def test_each_required_field(local_service, tmp_path, field):
    svc = local_service()
    broken = chat_line(1)
    del broken[field]
    errors, _ = _failed(svc, tmp_path, [chat_line(0), broken])
    assert ("missing_required_parameter", 2, field) in errors


def test_custom_id_must_be_unique(local_service, tmp_path):
    svc = local_service()
    errors, batch = _failed(svc, tmp_path, [chat_line(0), chat_line(1), chat_line(0), chat_line(2), chat_line(1)])
    assert errors == [("duplicate_custom_id", 3, "custom_id"), ("duplicate_custom_id", 5, "custom_id")]
    assert "line 1" in batch["errors"]["data"][0]["message"]


def test_method_must_be_post(local_service, tmp_path):
    errors, _ = _failed(local_service(), tmp_path, [chat_line(0) | {"method": "GET"}])
    assert errors == [("invalid_method", 1, "method")]


def test_url_must_equal_the_batch_endpoint(local_service, tmp_path):
    errors, _ = _failed(local_service(), tmp_path, [chat_line(0), chat_line(1) | {"url": "/v1/embeddings"}])
    assert errors == [("url_mismatch", 2, "url")]


def test_one_model_per_file_where_the_profile_says_so(local_service, tmp_path):
    lines = [chat_line(0, model="kimi-k2.5"), chat_line(1, model="moonshot-v1-8k"), chat_line(2, model="kimi-k2.5")]
    errors, _ = _failed(local_service(profile="moonshot"), tmp_path, lines)
    assert errors == [("model_mismatch", 2, "body.model")]
    openai_svc = local_service(profile="openai")
    assert wait_for_batch(openai_svc.engine, submit(openai_svc.engine, tmp_path, lines)["id"])["status"] == "completed"


@pytest.mark.parametrize("param", ["temperature", "top_p", "n", "presence_penalty", "frequency_penalty"])
def test_kimi_fixed_sampling_parameters_are_rejected(local_service, tmp_path, param):
    errors, _ = _failed(local_service(profile="moonshot"), tmp_path, [chat_line(0), chat_line(1, **{param: 1})])
    assert errors == [("unsupported_parameter", 2, f"body.{param}")]


def test_request_count_limit(local_service, tmp_path):
    svc = local_service(profile=custom_profile("http://x/v1", max_requests_per_file=3))
    errors, _ = _failed(svc, tmp_path, [chat_line(i) for i in range(5)])
    assert errors == [("too_many_tasks", 4, None)]


def test_embedding_input_limit(local_service, tmp_path):
    svc = local_service(profile=custom_profile("http://x/v1", max_embedding_inputs=4))
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ["a", "b"]}}
        for i in range(3)
    ]
    file_id = _upload(svc, tmp_path, lines)
    batch = wait_for_batch(svc.engine, svc.engine.create_batch(file_id, "/v1/embeddings", "24h")["id"])
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("too_many_tasks", 3)]


def test_a_file_of_blank_lines_has_no_requests(local_service, tmp_path):
    errors, _ = _failed(local_service(), tmp_path, [b"", b"  "])
    assert errors == [("empty_file", None, None)]


def test_many_bad_lines_are_listed_then_counted(local_service, tmp_path):
    errors, batch = _failed(local_service(), tmp_path, [b"nope"] * 150)
    assert len(errors) == 101 and errors[-1][0] == "too_many_errors"
    assert batch["errors"]["data"][-1]["message"].startswith("50 more")


def test_batch_file_quota_of_the_profile(local_service, tmp_path):
    svc = local_service(profile=custom_profile("http://x/v1", file_quota=2))
    client = sdk(svc)
    path = write_lines(tmp_path / "in.jsonl", [chat_line(0)])
    first = client.files.create(file=path, purpose="batch")
    client.files.create(file=path, purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=path, purpose="batch")
    assert info.value.body["code"] == "file_quota_exceeded"
    client.files.delete(first.id)
    assert client.files.create(file=path, purpose="batch").purpose == "batch"
    assert len(list((svc.data_dir / "files").iterdir())) == 2
