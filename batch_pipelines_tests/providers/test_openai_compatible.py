"""The OpenAI-compatible client over real HTTP, against the local service posing as each provider."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import time
import tracemalloc
from pathlib import Path

import httpx
import orjson
import pytest

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan, HttpFault
from batch_pipelines.profiles import custom_profile
from batch_pipelines.providers import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchStatus,
    InternalServerError,
    NotFoundError,
    OpenAICompatibleProvider,
    RateLimitError,
    RetryPolicy,
    make_provider,
)
from batch_pipelines_tests.support.clients import FAST_RETRY, capture_logs, requests_sent
from batch_pipelines_tests.support.request_files import CHAT, MODELS, custom_ids, write_requests
from batch_pipelines_tests.support.waiting import wait_terminal


def _client(svc, **options) -> OpenAICompatibleProvider:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("api_key", svc.api_key)
    return OpenAICompatibleProvider(svc.engine.profile, base_url=svc.base_url, **options)


@pytest.mark.parametrize("profile", ["moonshot", "openai"])
def test_every_call_from_upload_to_deletion(local_service, tmp_path, profile):
    svc = local_service(profile=profile)
    provider = _client(svc)
    assert provider.profile.delete_files_after_download is (profile == "moonshot")
    requests = write_requests(tmp_path / "requests.jsonl", 20, model=MODELS[profile])

    uploaded = provider.upload_file(requests)
    assert uploaded.id.startswith("file-")
    assert (uploaded.bytes, uploaded.purpose) == (requests.stat().st_size, "batch")
    assert re.fullmatch(r"requests\.[0-9a-f]{12}\.jsonl", uploaded.filename)  # a name of its own: see the lost upload

    # A quarter of the rows fail, so the batch has an output file and an error file.
    faults = FaultPlan(row_failures={500: 0.25}, seed=3).to_json()
    created = provider.create_batch(
        uploaded.id, endpoint=CHAT, metadata={"partition": "2024-01-01", FAULTS_METADATA_KEY: faults}
    )
    assert created.id.startswith("batch_")  # (an instant service may have finished it already)
    assert created.input_file_id == uploaded.id
    assert created.completion_window == svc.engine.profile.default_window
    assert created.metadata["partition"] == "2024-01-01"
    assert created.raw["object"] == "batch"

    done = wait_terminal(provider, created.id)
    assert done.status is BatchStatus.COMPLETED
    assert done.request_counts.total == 20
    assert done.request_counts.completed + done.request_counts.failed == 20
    assert 0 < done.request_counts.failed < 20
    assert done.created_at and done.in_progress_at and done.finalizing_at and done.completed_at

    files = provider.download_results(done, tmp_path / "results")
    ok, failed = custom_ids(files.output_path), custom_ids(files.error_path)
    assert len(ok) == done.request_counts.completed and len(failed) == done.request_counts.failed
    assert sorted(ok + failed) == sorted(f"row-{i}" for i in range(20))
    assert not list((tmp_path / "results").glob(".*.part"))  # no temporary file left behind

    assert [b.id for b in provider.find_batches({"partition": "2024-01-01"})] == [created.id]

    deleted = provider.delete_batch_files(done)
    assert deleted == [uploaded.id, done.output_file_id, done.error_file_id]
    with pytest.raises(NotFoundError):
        provider.download_file(done.output_file_id, tmp_path / "gone.jsonl")
    assert provider.delete_batch_files(done) == deleted  # deleting again is harmless
    assert not (tmp_path / "gone.jsonl").exists()


def test_cancel(local_service, tmp_path):
    svc = local_service(profile="openai", speed="realistic")
    provider = _client(svc)
    batch = provider.submit(write_requests(tmp_path / "r.jsonl", 5), endpoint=CHAT)
    cancelling = provider.cancel_batch(batch.id)
    assert cancelling.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
    assert cancelling.cancelling_at is not None
    done = wait_terminal(provider, batch.id)
    assert done.status is BatchStatus.CANCELLED and done.cancelled_at is not None


def test_list_follows_every_page_and_filters_on_metadata(local_service, tmp_path):
    svc = local_service(profile="openai", worker="none")  # nothing needs processing here
    provider = _client(svc)
    file_id = provider.upload_file(write_requests(tmp_path / "r.jsonl", 1)).id
    tags = ["a", "b", "a", None, "a", "b", "c"]
    ids = [
        provider.create_batch(file_id, endpoint=CHAT, metadata={"partition": t} if t else None).id for t in tags
    ]

    with capture_logs(logging.INFO) as records:
        listed = list(provider.list_batches(page_size=2))
    assert [b.id for b in listed] == ids[::-1]  # newest first, every page
    assert requests_sent(records, "GET", "/v1/batches?limit=2") == 4

    tagged_a = provider.find_batches({"partition": "a"})
    assert [b.id for b in tagged_a] == [ids[4], ids[2], ids[0]]
    assert [b.id for b in provider.list_batches(metadata={"partition": "c"}, page_size=3)] == [ids[6]]
    assert list(provider.list_batches(metadata={"partition": "zzz"}, page_size=3)) == []


def test_profile_without_metadata_still_works(local_service, tmp_path, caplog):
    profile = custom_profile("http://unused.invalid/v1", name="no-meta", supports_metadata=False)
    svc = local_service(profile=profile)  # answers 400 to any metadata, as such a provider would
    provider = _client(svc)
    with caplog.at_level(logging.WARNING, logger="batch_pipelines.providers"):
        batch = provider.submit(write_requests(tmp_path / "r.jsonl", 3), endpoint=CHAT, metadata={"partition": "a"})
    assert batch.metadata == {}
    assert "does not keep batch metadata" in caplog.text
    assert wait_terminal(provider, batch.id).status is BatchStatus.COMPLETED
    assert [b.id for b in provider.list_batches()] == [batch.id]
    assert provider.find_batches({"partition": "a"}) == []


def test_documented_limits_are_refused_before_sending(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    provider = _client(svc)
    with pytest.raises(ValueError, match="completion_window '2h'"):
        provider.create_batch("file-x", endpoint=CHAT, completion_window="2h")
    with pytest.raises(ValueError, match="/v1/embeddings"):
        provider.create_batch("file-x", endpoint="/v1/embeddings")
    with pytest.raises(ValueError, match="at most 16"):
        provider.create_batch("file-x", endpoint=CHAT, metadata={str(i): "v" for i in range(17)})
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(ValueError, match="0 bytes"):
        provider.upload_file(empty)
    # A 3d window is fine for moonshot (12h..7d), not for openai (24h only).
    file_id = provider.upload_file(write_requests(tmp_path / "r.jsonl", 1, model="kimi-k2.5")).id
    assert provider.create_batch(file_id, endpoint=CHAT, completion_window="3d").completion_window == "3d"


# ---- failures: what is waited out, what is raised at once ---------------------------------------


def test_429_with_retry_after_is_waited_out(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    provider = _client(svc, retry=RetryPolicy(max_retries=3, initial_delay=5.0, max_delay=5.0))
    batch = provider.submit(write_requests(tmp_path / "r.jsonl", 2, model="kimi-k2.5"), endpoint=CHAT)
    svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/batches/*", status=429, times=2, retry_after=0.2),)))
    started = time.monotonic()
    with capture_logs(logging.INFO) as records:
        assert provider.retrieve_batch(batch.id).id == batch.id
    elapsed = time.monotonic() - started
    assert requests_sent(records, "GET", f"/v1/batches/{batch.id}") == 3
    # Waited what the server asked (2 x 0.2 s), not the 5 s backoff of the policy.
    assert 0.4 <= elapsed < 3.0


def test_500_storm_is_waited_out(local_service, tmp_path):
    svc = local_service(profile="openai")
    provider = _client(svc)
    svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/files", method="POST", status=500, times=4),)))
    with capture_logs(logging.INFO) as records:
        uploaded = provider.upload_file(write_requests(tmp_path / "r.jsonl", 3))
    assert requests_sent(records, "POST", "/v1/files") == 5
    retries = [r for r in records if r.name == "batch_pipelines.providers.http" and "Retrying" in r.getMessage()]
    assert len(retries) == 4
    # The rewound file handle sent the whole file again on the successful attempt.
    assert uploaded.bytes == (tmp_path / "r.jsonl").stat().st_size


def test_a_storm_longer_than_the_retries_raises(local_service, tmp_path):
    svc = local_service(profile="openai", faults=FaultPlan(http_faults=(HttpFault(status=503, times=None),)))
    provider = _client(svc, max_retries=2)
    with capture_logs(logging.INFO) as records, pytest.raises(InternalServerError) as raised:
        provider.retrieve_batch("batch_0123456789abcdef01234567")
    assert requests_sent(records, "GET", "/v1/batches/") == 3
    assert raised.value.status_code == 503 and "injected by the local fault plan" in raised.value.message


def test_retry_after_beyond_the_ceiling_is_raised_at_once(local_service):
    svc = local_service(profile="openai", faults=FaultPlan(http_faults=(HttpFault(status=429, times=None, retry_after=600),)))
    provider = _client(svc)
    with capture_logs(logging.INFO) as records, pytest.raises(RateLimitError) as raised:
        list(provider.list_batches())
    assert requests_sent(records, "GET", "/v1/batches") == 1
    assert raised.value.code == "rate_limit_exceeded"


def test_400_is_raised_at_once_with_the_providers_message(local_service):
    svc = local_service(profile="moonshot")
    provider = _client(svc)
    with capture_logs(logging.INFO) as records, pytest.raises(BadRequestError) as raised:
        provider.create_batch("file-000000000000000000000000", endpoint=CHAT)
    assert requests_sent(records, "POST", "/v1/batches") == 1
    error = raised.value
    assert error.status_code == 400 and error.param == "input_file_id"
    assert "no such file" in error.message
    assert "no such file" in str(error) and "POST" in str(error)


def test_401_and_404_are_not_retried(local_service):
    svc = local_service(profile="openai")
    with capture_logs(logging.INFO) as records:
        with pytest.raises(AuthenticationError) as raised:
            _client(svc, api_key="sk-wrong").retrieve_batch("batch_0123456789abcdef01234567")
        assert raised.value.code == "invalid_api_key"
        with pytest.raises(NotFoundError):
            _client(svc).retrieve_batch("batch_0123456789abcdef01234567")
    assert requests_sent(records, "GET", "/v1/batches/") == 2


def test_connection_refused_is_retried_then_raised():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_provider("openai", api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1", retry=FAST_RETRY)
    with capture_logs(logging.INFO) as records, pytest.raises(APIConnectionError) as raised:
        provider.retrieve_batch("batch_1")
    assert len([r for r in records if "Retrying GET batches/batch_1" in r.getMessage()]) == FAST_RETRY.max_retries
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_a_timeout_is_retried(local_service):
    svc = local_service(profile="openai", faults=FaultPlan(http_faults=(HttpFault(status=None, delay=1.0, times=1),)))
    provider = _client(svc, timeout=0.3)
    with capture_logs(logging.INFO) as records:
        assert list(provider.list_batches()) == []
    assert requests_sent(records, "GET", "/v1/batches") == 1  # httpx logs answered requests only
    assert any("Retrying GET batches" in r.getMessage() and "ReadTimeout" in r.getMessage() for r in records)
    with pytest.raises(APITimeoutError):
        svc.set_faults(FaultPlan(http_faults=(HttpFault(status=None, delay=1.0, times=None),)))
        _client(svc, timeout=0.2, max_retries=1).retrieve_batch("batch_1")


def test_a_create_whose_answer_was_lost_is_not_sent_twice(local_service, tmp_path):
    """The service creates the batch but the answer is a 502 (a gateway losing it): no second batch.

    The first attempt's effect is made in the service's own engine just before the 502 is served.
    """
    svc = local_service(profile="openai", worker="none")
    provider = _client(svc)
    file_id = provider.upload_file(write_requests(tmp_path / "r.jsonl", 1)).id
    other_file = provider.upload_file(write_requests(tmp_path / "other.jsonl", 1)).id
    svc.engine.create_batch(other_file, CHAT, "24h")  # someone else's batch, listed newer
    first_attempt = svc.engine.create_batch(file_id, CHAT, "24h")
    svc.engine.create_batch(other_file, CHAT, "24h")
    svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/batches", method="POST", status=502, times=1),)))
    with capture_logs(logging.INFO) as records:
        batch = provider.create_batch(file_id, endpoint=CHAT)
    assert batch.id == first_attempt["id"] and batch.input_file_id == file_id
    assert requests_sent(records, "POST", "/v1/batches") == 1
    assert any("had taken effect" in r.getMessage() for r in records)
    assert len(list(provider.list_batches())) == 3


def test_an_upload_whose_answer_was_lost_leaves_no_orphan_file(local_service, tmp_path):
    """The service stores the file but answers 502: the retry finds that file instead of uploading another.

    Files count against the account's quota until deleted; an orphan would never be.
    """
    svc = local_service(profile="moonshot", worker="none")
    provider = _client(svc)
    path = write_requests(tmp_path / "shard-00000.jsonl", 3, model=MODELS["moonshot"])
    earlier = provider.upload_file(path)  # the same file uploaded before: same bytes, not the answer
    svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/files", method="POST", status=502, times=1, after=True),)))
    with capture_logs(logging.INFO) as records:
        uploaded = provider.upload_file(path)
    stored = svc.engine.list_files()["data"]
    assert len(stored) == 2 and {f["id"] for f in stored} == {earlier.id, uploaded.id}
    assert requests_sent(records, "POST", "/v1/files") == 1  # the one POST, answered with the injected 502, not sent again
    assert any("had taken effect" in r.getMessage() for r in records)
    assert uploaded.bytes == path.stat().st_size and uploaded.filename != earlier.filename


def test_a_create_refused_with_429_is_sent_again(local_service, tmp_path):
    svc = local_service(profile="openai", worker="none")
    provider = _client(svc)
    file_id = provider.upload_file(write_requests(tmp_path / "r.jsonl", 1)).id
    svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/batches", method="POST", status=429, times=1),)))
    with capture_logs(logging.INFO) as records:
        batch = provider.create_batch(file_id, endpoint=CHAT)
    assert requests_sent(records, "POST", "/v1/batches") == 2
    assert requests_sent(records, "GET", "/v1/batches") == 0  # a 429 took no effect: no need to look
    assert [b.id for b in provider.list_batches()] == [batch.id]


def test_uploads_and_downloads_stream_in_bounded_memory(local_service, tmp_path):
    """A 32 MB file goes up and comes back down; the process never holds more than a few MB of it."""
    svc = local_service(profile="openai", worker="none")
    provider = _client(svc)
    big = tmp_path / "big.jsonl"
    line = orjson.dumps({"custom_id": "x", "pad": "y" * 1000}) + b"\n"
    with big.open("wb") as fh:
        for _ in range(32 * 1024 * 1024 // len(line)):
            fh.write(line)
    size = big.stat().st_size

    tracemalloc.start()
    try:
        uploaded = provider.upload_file(big)
        back = provider.download_file(uploaded.id, tmp_path / "back.jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded.bytes == size and back.stat().st_size == size
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB file"
    assert _sha256(back) == _sha256(big)


def test_make_provider_and_its_key(monkeypatch, local_service):
    svc = local_service(profile="moonshot", api_key="sk-from-env")
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-from-env")
    provider = make_provider("moonshot", base_url=svc.base_url)
    assert isinstance(provider, OpenAICompatibleProvider) and provider.profile.name == "moonshot"
    assert list(provider.list_batches()) == []
    monkeypatch.delenv("MOONSHOT_API_KEY")
    with pytest.raises(Exception, match="MOONSHOT_API_KEY"):
        make_provider("moonshot")
    with pytest.raises(TypeError, match="only apply to the local provider"):
        make_provider("openai", api_key="k", data_dir="/tmp/x")
    with pytest.raises(ValueError, match="unknown provider profile"):
        make_provider("nope", api_key="k")
    assert "sk-from-env" not in repr(provider)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_make_provider_serves_the_documented_custom_provider(local_service, tmp_path):
    svc = local_service(profile="openai")
    with make_provider("custom", base_url=svc.base_url, api_key=svc.api_key) as provider:
        assert provider.profile.name == "custom" and provider.profile.base_url == svc.base_url
        assert provider.upload_file(write_requests(tmp_path / "in.jsonl", 2, model=MODELS["openai"])).id.startswith("file")
    with pytest.raises(ValueError, match="needs base_url"):
        make_provider("custom", api_key="k")
