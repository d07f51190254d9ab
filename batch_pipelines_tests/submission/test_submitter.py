"""The submit-once engine on its own, with no Dagster: the local service over HTTP behind the real client."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from batch_pipelines.profiles import get_profile
from batch_pipelines.providers import Batch, OpenAICompatibleProvider
from batch_pipelines.requests import RequestManifest, RequestSpec, build_request_files
from batch_pipelines.submission import (
    FINGERPRINT_TAG,
    PARTITION_TAG,
    PIPELINE_TAG,
    RUN_TAG,
    PartitionFolder,
    Submitter,
)
from batch_pipelines_tests.support.clients import FAST_RETRY
from batch_pipelines_tests.support.service import LocalService, service_batches

SPEC = RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "Classify: {text}"}], key_column="id")
DAY = "2024-01-01"


class AnswerLost(Exception):
    """The create took effect at the provider, but its answer never reached the submitter."""


class _LosesTheAnswer(OpenAICompatibleProvider):
    def submit(self, path: Path, **options: object) -> Batch:
        super().submit(path, **options)  # type: ignore[arg-type]
        raise AnswerLost


class _ListsTooEarly(OpenAICompatibleProvider):
    """Its first listing is from before another submitter created its batch (no lock between them)."""

    listed = False

    def find_batches(self, metadata, *, created_after=None):  # type: ignore[no-untyped-def]
        if not self.listed:
            self.listed = True
            return []
        return super().find_batches(metadata, created_after=created_after)


def _client(service: LocalService, cls: type[OpenAICompatibleProvider] = OpenAICompatibleProvider) -> OpenAICompatibleProvider:
    return cls("openai", api_key=service.api_key, base_url=service.base_url, retry=FAST_RETRY)


def _manifest(tmp_path: Path, texts: list[str], *, shards: int | None = None) -> RequestManifest:
    frame = pd.DataFrame({"id": [f"row-{i}" for i in range(len(texts))], "text": texts})
    folder = PartitionFolder.of(tmp_path / "storage", "classify", DAY)
    return build_request_files(frame, SPEC, folder.attempt(1), profile=get_profile("openai"), max_requests_per_shard=shards)


def _submitter(provider: OpenAICompatibleProvider, run_id: str = "run-1") -> Submitter:
    return Submitter(provider=provider, pipeline="classify", partition=DAY, provider_name="openai", completion_window="24h", run_id=run_id)


@pytest.fixture
def svc(local_service) -> LocalService:
    return local_service(speed="realistic")  # batches stay in flight while the test looks at them


def test_each_shard_becomes_one_tagged_batch(svc, tmp_path):
    manifest = _manifest(tmp_path, [f"text {i}" for i in range(6)], shards=2)
    with _client(svc) as provider:
        submitted = _submitter(provider).submit(manifest, asset="classify_batch")
    assert [s.record.shard for s in submitted] == [0, 1, 2] and not any(s.reattached for s in submitted)
    batches = {b["id"]: b for b in service_batches(svc)}
    assert set(batches) == {s.batch.id for s in submitted}
    for s in submitted:
        tags = batches[s.batch.id]["metadata"]
        assert tags[PIPELINE_TAG] == "classify" and tags[PARTITION_TAG] == DAY and tags[RUN_TAG] == "run-1"
        assert tags[FINGERPRINT_TAG] == s.record.fingerprint == manifest.shards[s.record.shard].fingerprint("openai", manifest.endpoint)


def test_a_create_whose_answer_was_lost_is_re_attached_not_paid_twice(svc, tmp_path):
    manifest = _manifest(tmp_path, ["a", "b", "c"])
    with _client(svc, _LosesTheAnswer) as losing, pytest.raises(AnswerLost):
        _submitter(losing).submit(manifest, asset="classify_batch")
    [accepted] = service_batches(svc)

    with _client(svc) as provider:
        [again] = _submitter(provider, run_id="run-2").submit(manifest, asset="classify_batch")

    assert again.reattached and again.batch.id == accepted["id"]
    assert len(service_batches(svc)) == 1


def test_racing_submitters_keep_the_first_batch_and_cancel_their_own(svc, tmp_path):
    manifest = _manifest(tmp_path, ["a", "b", "c"])
    with _client(svc) as first_client, _client(svc, _ListsTooEarly) as late_client:
        [first] = _submitter(first_client, "run-1").submit(manifest, asset="classify_batch")
        [late] = _submitter(late_client, "run-2").submit(manifest, asset="classify_batch")

    batches = {b["id"]: b for b in service_batches(svc)}
    assert len(batches) == 2  # the late submitter did create one: nothing shared a lock with it...
    [duplicate] = set(batches) - {first.batch.id}
    assert batches[duplicate]["status"] in ("cancelling", "cancelled")  # ...and cancelled it at once
    assert late.reattached and late.record.batch_id == first.batch.id == first.record.batch_id


def test_a_changed_shard_is_submitted_anew(svc, tmp_path):
    with _client(svc) as provider:
        [before] = _submitter(provider).submit(_manifest(tmp_path, ["a", "b", "c"]), asset="classify_batch")
        [same] = _submitter(provider).submit(_manifest(tmp_path, ["a", "b", "c"]), asset="classify_batch")
        [changed] = _submitter(provider).submit(_manifest(tmp_path, ["a", "b", "C"]), asset="classify_batch")

    assert same.reattached and same.batch.id == before.batch.id
    assert not changed.reattached and changed.batch.id != before.batch.id
    assert changed.record.fingerprint != before.record.fingerprint
    assert len(service_batches(svc)) == 2


def test_submitters_holding_the_partition_lock_create_one_batch(svc, tmp_path):
    manifest = _manifest(tmp_path, [f"text {i}" for i in range(4)])
    lock = threading.Lock()  # standing for the partition's lock the Dagster face holds around a submit
    start = threading.Barrier(4)
    results: list[bool] = []

    def submit(run: int) -> None:
        with _client(svc) as provider:
            start.wait()
            with lock:
                [done] = _submitter(provider, f"run-{run}").submit(manifest, asset="classify_batch")
            results.append(done.reattached)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False, True, True, True]
    assert len(service_batches(svc)) == 1


