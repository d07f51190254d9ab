"""A batch's ``model`` and ``usage``, as the SDK's ``Batch`` has them, and a data dir from before them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines.local_service.batch_usage import UsageSum
from batch_pipelines.providers import BatchStatus, BatchUsage, OpenAICompatibleProvider
from batch_pipelines_tests.support.clients import FAST_RETRY, sdk
from batch_pipelines_tests.support.request_files import CHAT, read_jsonl, write_requests
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_terminal

#: A data dir made by the service at 7a7981d (before model, usage and file expiry): a batch
#: completed, and a batch created but never validated (its worker never ran).
OLD_DATA_DIR = Path(__file__).parent / "data" / "data_dir_7a7981d"
OLD_COMPLETED = "batch_3afb4b934576f3a3ca9dc7bf"
OLD_WAITING = "batch_45e5fe3e1f10810b25c08ef2"


def _client(svc) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(svc.engine.profile, base_url=svc.base_url, api_key=svc.api_key, retry=FAST_RETRY)


def _summed(output: Path) -> tuple[int, int]:
    usages = [line["response"]["body"]["usage"] for line in read_jsonl(output)]
    return sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)


def test_a_batch_carries_its_model_and_the_usage_of_its_answers(local_service, tmp_path):
    svc = local_service(profile="openai")
    faults = FaultPlan(row_failures={500: 0.25}, seed=3).to_json()  # failed rows use no tokens
    with _client(svc) as provider:
        uploaded = provider.upload_file(write_requests(tmp_path / "requests.jsonl", 40, model="gpt-4o-mini"))
        created = provider.create_batch(uploaded.id, endpoint=CHAT, metadata={FAULTS_METADATA_KEY: faults})
        assert created.usage is None  # not final while it runs
        done = wait_terminal(provider, created.id)
        files = provider.download_results(done, tmp_path)
    assert done.status == BatchStatus.COMPLETED and 0 < done.request_counts.failed < 40
    assert done.model == "gpt-4o-mini"
    input_tokens, output_tokens = _summed(files.output_path)
    assert done.usage == BatchUsage(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )
    assert done.raw["usage"]["input_tokens_details"] == {"cached_tokens": 0}


def test_usage_adds_both_dialects_and_their_details():
    usage = UsageSum()
    usage.add({"usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6},
                         "completion_tokens_details": {"reasoning_tokens": 2}}})
    usage.add({"usage": {"input_tokens": 5, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 1},
                         "output_tokens_details": {"reasoning_tokens": 3}}})
    usage.add({"object": "video"})  # no usage: adds nothing
    usage.add({"usage": {"input_tokens": "many", "output_tokens": -1}})  # nonsense counts: nothing either
    assert (usage.input, usage.cached, usage.output, usage.reasoning) == (15, 7, 11, 5)


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_data_dir_of_the_old_schema_opens_and_works(local_service, tmp_path, worker):
    data_dir = tmp_path / "data"
    shutil.copytree(OLD_DATA_DIR, data_dir)
    svc = local_service(profile="openai", data_dir=data_dir, worker=worker)
    client = sdk(svc)
    # What the old service made is all there, read through the new columns.
    old = client.batches.retrieve(OLD_COMPLETED)
    assert old.status == "completed" and old.request_counts.completed == 3 and old.metadata == {"made_by": "7a7981d"}
    assert old.model is None and old.usage is None  # not known for a batch made before they were kept
    assert len(client.files.content(old.output_file_id).text.splitlines()) == 3
    assert {f.filename for f in client.files.list()} >= {"done.jsonl", "waiting.jsonl"}
    assert all(f.expires_at is None for f in client.files.list())
    # The batch the old service never validated runs now, and gets a model (its usage was not
    # counted from its start: none).
    waiting = wait_for_batch(svc.engine, OLD_WAITING)
    assert waiting["status"] == "completed" and waiting["request_counts"]["completed"] == 4
    assert waiting["model"] == "gpt-4o-mini"
    # New work in the old data dir has everything.
    uploaded = client.files.create(file=write_requests(tmp_path / "new.jsonl", 2), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    wait_for_batch(svc.engine, batch.id)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.model == "gpt-4o-mini" and batch.usage.total_tokens > 0
    assert len(client.batches.list().data) == 3
