"""Never paying twice without metadata: intents recorded before the create, orphans found and proven."""

from __future__ import annotations

import pytest

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.profiles import MESSAGES
from batch_pipelines.providers import ProviderError, make_provider
from batch_pipelines.storage import Storage
from batch_pipelines.submission import FINGERPRINT_TAG, PARTITION_TAG, PIPELINE_TAG, RecordedBatches
from batch_pipelines_tests.support.clients import FAST_RETRY
from batch_pipelines_tests.support.object_storage import s3_bucket, s3_endpoint  # noqa: F401 (fixtures)
from batch_pipelines_tests.support.request_files import write_lines
from batch_pipelines_tests.support.waiting import wait_terminal

TAGS = {PIPELINE_TAG: "classify", PARTITION_TAG: "2024-01-01", FINGERPRINT_TAG: "fp1"}


def line(custom_id: str) -> dict:
    body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": custom_id}]}
    return {"custom_id": custom_id, "method": "POST", "url": MESSAGES, "body": body}


def shard(tmp_path, ids, name="shard.jsonl"):
    return write_lines(tmp_path / name, [line(i) for i in ids])


def recorded(svc, tmp_path) -> RecordedBatches:
    inner = make_provider("anthropic", api_key=svc.api_key, base_url=svc.base_url, retry=FAST_RETRY)
    return RecordedBatches(inner, tmp_path / "records")


def test_recorded_tags_find_the_batch(local_service, tmp_path):
    svc = local_service(profile="anthropic")
    with recorded(svc, tmp_path) as provider:
        batch = provider.submit(shard(tmp_path, ["a", "b"]), endpoint=MESSAGES, metadata=TAGS)
        assert batch.metadata == TAGS
        [found] = provider.find_batches({PIPELINE_TAG: "classify", PARTITION_TAG: "2024-01-01"})
        assert found.id == batch.id and found.metadata[FINGERPRINT_TAG] == "fp1"
        assert provider.find_batches({PIPELINE_TAG: "classify", PARTITION_TAG: "2024-01-02"}) == []


def test_a_batch_accepted_but_never_recorded_is_found_and_proven(local_service, tmp_path):
    lost = HttpFault(route="/v1/messages/batches", method="POST", drop=True, after=True, status=None, times=1)
    svc = local_service(profile="anthropic")
    with recorded(svc, tmp_path) as provider:
        # Another shard of the same size, created meanwhile by someone else: not ours.
        other = provider.provider.submit(shard(tmp_path, ["x", "y"], "other.jsonl"), endpoint=MESSAGES)
        wait_terminal(provider, other.id)
        svc.set_faults(FaultPlan(http_faults=(lost,)))
        with pytest.raises(ProviderError, match="lost its answer"):
            provider.submit(shard(tmp_path, ["a", "b"]), endpoint=MESSAGES, metadata=TAGS)
        mine = [b for b in provider.provider.list_batches() if b.id != other.id]
        assert len(mine) == 1  # accepted once
        [found] = provider.find_batches(TAGS)  # provisional while it runs, or proven once ended
        assert found.id == mine[0].id
        wait_terminal(provider, found.id)
        [proven] = provider.find_batches(TAGS)
        assert proven.id == mine[0].id and proven.metadata == TAGS
        assert len(list(provider.provider.list_batches())) == 2  # nothing sent twice


def test_records_in_object_storage_prove_a_lost_create_after_the_shard_is_gone(local_service, tmp_path, s3_bucket):
    """On S3, the shard a run sent was a scratch copy, gone with the run: the intent's digest proves the batch."""
    lost = HttpFault(route="/v1/messages/batches", method="POST", drop=True, after=True, status=None, times=1)
    svc = local_service(profile="anthropic")
    inner = make_provider("anthropic", api_key=svc.api_key, base_url=svc.base_url, retry=FAST_RETRY)
    with RecordedBatches(inner, Storage(s3_bucket.url, s3_bucket.options), "_batch_records") as provider:
        svc.set_faults(FaultPlan(http_faults=(lost,)))
        sent = shard(tmp_path, ["a", "b"])
        with pytest.raises(ProviderError, match="lost its answer"):
            provider.submit(sent, endpoint=MESSAGES, metadata=TAGS)
        sent.unlink()
        [mine] = provider.provider.list_batches()
        wait_terminal(provider, mine.id)
        [proven] = provider.find_batches(TAGS)
        assert proven.id == mine.id and proven.metadata == TAGS
    assert [k.split("/")[:3] for k in s3_bucket.keys()] == [["_batch_records", "classify", "2024-01-01"]]


def test_an_intent_whose_create_never_took_effect_lets_the_shard_go(local_service, tmp_path):
    refused = HttpFault(route="/v1/messages/batches", method="POST", status=400, times=1)
    svc = local_service(profile="anthropic")
    with recorded(svc, tmp_path) as provider:
        other = provider.provider.submit(shard(tmp_path, ["x", "y"], "other.jsonl"), endpoint=MESSAGES)  # the same size, ended
        wait_terminal(provider, other.id)
        svc.set_faults(FaultPlan(http_faults=(refused,)))
        with pytest.raises(ProviderError):
            provider.submit(shard(tmp_path, ["a", "b"]), endpoint=MESSAGES, metadata=TAGS)
        assert provider.find_batches(TAGS) == []  # the same-size batch is ruled out by its custom_ids
        assert not list((tmp_path / "records").rglob("*.json"))  # proven not submitted: the intent is gone
        batch = provider.submit(shard(tmp_path, ["a", "b"]), endpoint=MESSAGES, metadata=TAGS)
        assert [b.id for b in provider.find_batches(TAGS)] == [batch.id]
