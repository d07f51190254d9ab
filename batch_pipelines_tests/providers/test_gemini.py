"""The Gemini provider: a shard sent inline or as an uploaded file, polled, its responses read, over HTTP and in-process."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.profiles import GENERATE_CONTENT, get_profile
from batch_pipelines.providers import (
    BatchStatus,
    GeminiProvider,
    NotFoundError,
    ProviderError,
    make_provider,
)
from batch_pipelines.results import iter_result_lines
from batch_pipelines_tests.support.clients import FAST_RETRY, capture_logs
from batch_pipelines_tests.support.request_files import write_lines
from batch_pipelines_tests.support.waiting import wait_terminal

MODEL = "gemini-2.5-flash"
KEY = "gemini-test-key"
TAGS = {"bp_pipeline": "reviews", "bp_partition": "2024-01-01", "bp_fingerprint": "ab" * 32}


def request_line(i: int, model: str = MODEL, **body) -> dict:
    request = {"model": model, "contents": [{"role": "user", "parts": [{"text": f"Classify text {i}"}]}], **body}
    return {"custom_id": f"row-{i}", "method": "POST", "url": GENERATE_CONTENT, "body": request}


def shard(tmp_path, n: int, name: str = "shard.jsonl", **body):
    return write_lines(tmp_path / name, [request_line(i, **body) for i in range(n)])


@pytest.fixture
def gemini_service(local_service):
    return local_service(profile="gemini", api_key=KEY)


def http_provider(svc, **options) -> GeminiProvider:
    provider = make_provider("gemini", api_key=svc.api_key, base_url=svc.base_url, retry=FAST_RETRY, **options)
    assert isinstance(provider, GeminiProvider)
    return provider


def outcomes(path) -> dict:
    return {line.custom_id: (line.outcome, line.status_code) for line in iter_result_lines(path, line_format="gemini")}


def test_a_small_shard_goes_inline_tagged_by_its_display_name(gemini_service, tmp_path):
    with http_provider(gemini_service) as provider, capture_logs() as records:
        batch = provider.submit(shard(tmp_path, 6), endpoint=GENERATE_CONTENT, metadata=TAGS)
        assert batch.request_counts.total == 6 and batch.input_file_id is None  # inline: no file
        assert batch.metadata == TAGS and batch.raw["metadata"]["model"] == f"models/{MODEL}"
        done = wait_terminal(provider, batch.id)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == 6 and done.completed_at
        files = provider.download_results(done, tmp_path / "out")
        assert files.error_path is None
        lines = list(iter_result_lines(files.output_path, line_format="gemini"))
        assert sorted(line.custom_id for line in lines) == [f"row-{i}" for i in range(6)]
        assert all(line.outcome == "succeeded" and line.body["candidates"] for line in lines)
        assert [b.id for b in provider.find_batches({"bp_partition": "2024-01-01"})] == [batch.id]  # found by its tags
        assert provider.find_batches({"bp_partition": "2024-01-02"}) == []
        provider.delete_batch(batch.id)
        with pytest.raises(NotFoundError):
            provider.retrieve_batch(batch.id)
    assert KEY not in repr(provider)
    assert all(KEY not in record.getMessage() for record in records)


def test_a_large_shard_goes_as_an_uploaded_file(local_service, tmp_path):
    # A profile whose inline limit a small shard is over: the file road, resumable upload included.
    profile = replace(get_profile("gemini"), max_inline_bytes=1000)
    svc = local_service(profile=profile, api_key=KEY)
    with GeminiProvider(profile, api_key=KEY, base_url=svc.base_url, retry=FAST_RETRY) as provider:
        batch = provider.submit(shard(tmp_path, 40), endpoint=GENERATE_CONTENT, metadata=TAGS)
        assert batch.input_file_id and batch.input_file_id.startswith("files/")
        done = wait_terminal(provider, batch.id)
        assert done.output_file_id and len(done.output_file_id.removeprefix("files/")) <= 40
        files = provider.download_results(done, tmp_path / "out")
        assert set(outcomes(files.output_path).values()) == {("succeeded", 200)} and len(outcomes(files.output_path)) == 40
        assert provider.delete_batch_files(done) == [batch.input_file_id]
        provider.delete_file(batch.input_file_id)  # already gone: no error


def test_failed_and_expired_rows_keep_their_kinds(local_service, tmp_path):
    svc = local_service(profile="gemini", faults=FaultPlan(row_failures={429: 0.3, 400: 0.1}, expire_after=0.6, seed=3))
    with http_provider(svc) as provider:
        done = wait_terminal(provider, provider.submit(shard(tmp_path, 20), endpoint=GENERATE_CONTENT).id)
        assert done.status is BatchStatus.EXPIRED
        found = outcomes(provider.download_results(done, tmp_path / "out").output_path)
        assert len(found) == 20
        assert {("expired", None), ("failed", 429), ("succeeded", 200)} <= set(found.values())


def test_cancel(local_service, tmp_path):
    svc = local_service(profile="gemini", faults=FaultPlan(row_delay=2.0))
    with http_provider(svc) as provider:
        batch = provider.submit(shard(tmp_path, 3), endpoint=GENERATE_CONTENT)
        assert provider.cancel_batch(batch.id).status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLED)
        done = wait_terminal(provider, batch.id)
        assert done.status is BatchStatus.CANCELLED
        found = outcomes(provider.download_results(done, tmp_path / "out").output_path)
        assert ("cancelled", None) in found.values() and len(found) == 3


def test_a_create_whose_answer_was_lost_finds_its_batch_instead_of_paying_twice(local_service, tmp_path):
    lost = HttpFault(route="/v1/models/*", method="POST", drop=True, after=True, status=None, times=1)
    svc = local_service(profile="gemini", faults=FaultPlan(http_faults=(lost,)))
    with http_provider(svc) as provider:
        batch = provider.submit(shard(tmp_path, 4), endpoint=GENERATE_CONTENT, metadata=TAGS)
        assert batch.metadata == TAGS
        assert [b.id for b in provider.list_batches()] == [batch.id]  # accepted once, never twice


def test_a_refused_create_is_retried(local_service, tmp_path):
    busy = HttpFault(route="/v1/models/*", method="POST", status=503, times=2)
    svc = local_service(profile="gemini", faults=FaultPlan(http_faults=(busy,)))
    with http_provider(svc) as provider:
        provider.submit(shard(tmp_path, 2), endpoint=GENERATE_CONTENT)
        assert len(list(provider.list_batches())) == 1


def test_list_follows_pages(gemini_service, tmp_path):
    with http_provider(gemini_service) as provider:
        ids = [provider.submit(shard(tmp_path, 1, name=f"s{i}.jsonl"), endpoint=GENERATE_CONTENT).id for i in range(5)]
        assert [b.id for b in provider.list_batches(page_size=2)] == list(reversed(ids))


def test_bad_shards_are_refused_before_sending(gemini_service, tmp_path):
    with http_provider(gemini_service) as provider:
        with pytest.raises(ValueError, match="endpoints"):
            provider.submit(shard(tmp_path, 1), endpoint="/v1/chat/completions")
        with pytest.raises(ValueError, match="completion_window"):
            provider.submit(shard(tmp_path, 1), endpoint=GENERATE_CONTENT, completion_window="48h")
        mixed = write_lines(tmp_path / "mixed.jsonl", [request_line(0), request_line(1, model="gemini-2.5-pro")])
        with pytest.raises(ValueError, match="line 2: model 'gemini-2.5-pro' is not the batch's 'gemini-2.5-flash'"):
            provider.submit(mixed, endpoint=GENERATE_CONTENT)
        with pytest.raises(ProviderError, match="per model"):
            provider.create_batch("files/abc", endpoint=GENERATE_CONTENT)
        assert list(provider.list_batches()) == []


def test_the_key_comes_from_gemini_api_key_or_google_api_key(gemini_service, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        make_provider("gemini", base_url=gemini_service.base_url)
    for env in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.setenv(env, gemini_service.api_key)
        with make_provider("gemini", base_url=gemini_service.base_url) as provider:
            assert list(provider.list_batches()) == []
        monkeypatch.delenv(env)


def test_the_local_provider_poses_as_gemini(tmp_path):
    with make_provider("local", pose_as="gemini", data_dir=tmp_path / "local", worker="thread") as provider:
        assert isinstance(provider, GeminiProvider) and provider.profile.name == "gemini"
        done = wait_terminal(provider, provider.submit(shard(tmp_path, 3), endpoint=GENERATE_CONTENT, metadata=TAGS).id)
        assert done.status is BatchStatus.COMPLETED and done.metadata == TAGS
        files = provider.download_results(done, tmp_path / "out")
        assert sorted(outcomes(files.output_path)) == ["row-0", "row-1", "row-2"]
        with pytest.raises(NotFoundError):
            provider.retrieve_batch("000000000000000000000000")
