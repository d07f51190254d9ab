"""The Anthropic provider: a shard sent inline, polled, its results read, over HTTP and in-process."""

from __future__ import annotations

import pytest

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.profiles import MESSAGES
from batch_pipelines.providers import (
    AnthropicProvider,
    BatchStatus,
    NotFoundError,
    ProviderError,
    make_provider,
)
from batch_pipelines.results import iter_result_lines
from batch_pipelines_tests.support.clients import FAST_RETRY, capture_logs
from batch_pipelines_tests.support.request_files import write_lines
from batch_pipelines_tests.support.waiting import wait_terminal

MODEL = "claude-haiku-4-5"


def message_line(i: int, **params) -> dict:
    body = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": f"Classify text {i}"}], **params}
    return {"custom_id": f"row-{i}", "method": "POST", "url": MESSAGES, "body": body}


def shard(tmp_path, n: int, name: str = "shard.jsonl"):
    return write_lines(tmp_path / name, [message_line(i) for i in range(n)])


@pytest.fixture
def anthropic_service(local_service):
    return local_service(profile="anthropic", api_key="sk-ant-test")


def http_provider(svc, **options) -> AnthropicProvider:
    provider = make_provider("anthropic", api_key=svc.api_key, base_url=svc.base_url, retry=FAST_RETRY, **options)
    assert isinstance(provider, AnthropicProvider)
    return provider


def test_a_shard_inline_then_its_results_over_http(anthropic_service, tmp_path):
    with http_provider(anthropic_service) as provider, capture_logs() as records:
        batch = provider.submit(shard(tmp_path, 6), endpoint=MESSAGES, metadata={"bp_pipeline": "p"})
        assert batch.status is BatchStatus.IN_PROGRESS and batch.request_counts.total == 6
        assert batch.id.startswith("msgbatch_") and batch.metadata == {}
        done = wait_terminal(provider, batch.id)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == 6
        assert done.completed_at and done.results_url.startswith(anthropic_service.base_url)
        files = provider.download_results(done, tmp_path / "out")
        assert files.error_path is None
        lines = list(iter_result_lines(files.output_path, line_format="anthropic"))
        assert sorted(line.custom_id for line in lines) == [f"row-{i}" for i in range(6)]
        assert [b.id for b in provider.list_batches(page_size=1)] == [batch.id]
        assert provider.find_batches({"bp_pipeline": "p"}) == []  # no metadata to find a batch by
        provider.delete_batch(batch.id)
        with pytest.raises(NotFoundError):
            provider.retrieve_batch(batch.id)
    assert "sk-ant-test" not in repr(provider)
    assert all("sk-ant-test" not in record.getMessage() for record in records)


def test_failed_and_expired_rows_keep_their_kinds(local_service, tmp_path):
    svc = local_service(profile="anthropic", faults=FaultPlan(row_failures={429: 0.3}, expire_after=0.6, seed=3))
    with http_provider(svc) as provider:
        done = wait_terminal(provider, provider.submit(shard(tmp_path, 10), endpoint=MESSAGES).id)
        assert done.status is BatchStatus.EXPIRED
        files = provider.download_results(done, tmp_path / "out")
        lines = list(iter_result_lines(files.output_path, line_format="anthropic"))
        outcomes = {line.custom_id: (line.outcome, line.status_code) for line in lines}
        assert len(outcomes) == 10
        assert ("expired", None) in outcomes.values() and ("failed", 429) in outcomes.values()


def test_cancel(local_service, tmp_path):
    svc = local_service(profile="anthropic", faults=FaultPlan(row_delay=2.0))
    with http_provider(svc) as provider:
        batch = provider.submit(shard(tmp_path, 3), endpoint=MESSAGES)
        assert provider.cancel_batch(batch.id).status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
        done = wait_terminal(provider, batch.id)
        assert done.status is BatchStatus.CANCELLED and done.cancelling_at and done.request_counts.failed >= 1


def test_a_create_whose_answer_was_lost_is_not_sent_again(local_service, tmp_path):
    lost = HttpFault(route="/v1/messages/batches", method="POST", drop=True, after=True, status=None)
    svc = local_service(profile="anthropic", faults=FaultPlan(http_faults=(lost,)))
    with http_provider(svc) as provider:
        with pytest.raises(ProviderError, match="lost its answer"):
            provider.submit(shard(tmp_path, 4), endpoint=MESSAGES)
        assert len(list(provider.list_batches())) == 1  # accepted once, never twice


def test_a_refused_create_is_retried(local_service, tmp_path):
    busy = HttpFault(route="/v1/messages/batches", method="POST", status=529, times=2)
    svc = local_service(profile="anthropic", faults=FaultPlan(http_faults=(busy,)))
    with http_provider(svc) as provider:
        provider.submit(shard(tmp_path, 2), endpoint=MESSAGES)
        assert len(list(provider.list_batches())) == 1


def test_bad_shards_are_refused_before_sending(anthropic_service, tmp_path):
    with http_provider(anthropic_service) as provider:
        with pytest.raises(ValueError, match="endpoints"):
            provider.submit(shard(tmp_path, 1), endpoint="/v1/chat/completions")
        with pytest.raises(ValueError, match="completion_window"):
            provider.submit(shard(tmp_path, 1), endpoint=MESSAGES, completion_window="48h")
        with pytest.raises(ProviderError, match="inline"):
            provider.upload_file(shard(tmp_path, 1))
        assert list(provider.list_batches()) == []


def test_the_key_comes_from_the_environment(anthropic_service, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY"):
        make_provider("anthropic", base_url=anthropic_service.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_service.api_key)
    with make_provider("anthropic", base_url=anthropic_service.base_url) as provider:
        assert list(provider.list_batches()) == []


def test_the_local_provider_poses_as_anthropic(tmp_path):
    with make_provider("local", pose_as="anthropic", data_dir=tmp_path / "local", worker="thread") as provider:
        assert isinstance(provider, AnthropicProvider) and provider.profile.name == "anthropic"
        done = wait_terminal(provider, provider.submit(shard(tmp_path, 3), endpoint=MESSAGES).id)
        assert done.status is BatchStatus.COMPLETED
        files = provider.download_results(done, tmp_path / "out")
        assert sorted(line.custom_id for line in iter_result_lines(files.output_path, line_format="anthropic")) == [
            "row-0", "row-1", "row-2"
        ]
        with pytest.raises(NotFoundError):
            provider.retrieve_batch("msgbatch_000000000000000000000000")
