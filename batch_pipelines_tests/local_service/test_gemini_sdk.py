"""The official google-genai SDK runs the Batch Mode workflow against ``batch-pipelines serve --profile gemini``.

Over HTTP, in the SDK's default URL version (``v1``) and the docs' (``v1beta``): inline batches,
file batches (resumable upload, create, poll, download), list with paging, cancel, delete, and
the SDK's errors for an unknown batch and a wrong key.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import errors, types

from batch_pipelines_tests.support.waiting import wait_until

MODEL = "gemini-2.5-flash"
KEY = "gemini-local-test-key"
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """The service posing as Gemini, in its own process, as a user starts it; its root URL."""
    data = tmp_path_factory.mktemp("gemini") / "data"
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(data),
               "--profile", "gemini", "--speed", "instant", "--api-key", KEY]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1beta", first)
        assert match, first + server.stderr.read()
        yield match.group(1)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0
        assert "Traceback" not in server.stderr.read()


def client(base_url: str, version: str, key: str = KEY) -> genai.Client:
    options = types.HttpOptions(base_url=base_url, api_version=version, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=key, http_options=options)


def request(i: int, **config) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": f"Say hello to number {i}"}]}], **config}


def finished(sdk: genai.Client, name: str):
    def check():
        job = sdk.batches.get(name=name)
        return job if job.state.name in DONE else None

    return wait_until(check, interval=0.05)


VERSIONS = pytest.mark.parametrize("version", ["v1", "v1beta"])


@VERSIONS
def test_inline_batch_with_structured_output(served, version):
    sdk = client(served, version)
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}}, "required": ["label"]}
    structured = {"generation_config": {"response_mime_type": "application/json", "response_json_schema": schema}}
    inline = [types.InlinedRequest(contents=f"Say hello to number {i}", metadata={"key": f"row-{i}"}) for i in range(3)]
    inline.append(types.InlinedRequest(contents="Label this: buy now", metadata={"key": "row-3"}, config=structured["generation_config"]))
    job = sdk.batches.create(model=MODEL, src=inline, config={"display_name": "bp_pipeline=demo&bp_partition=2024-01-01"})
    assert job.name.startswith("batches/") and job.display_name == "bp_pipeline=demo&bp_partition=2024-01-01"
    assert job.state.name in {"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
    assert job.model == f"models/{MODEL}"

    done = finished(sdk, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.end_time is not None
    answers = done.dest.inlined_responses
    assert [a.metadata["key"] for a in answers] == ["row-0", "row-1", "row-2", "row-3"]  # the requests' order
    assert all(a.error is None for a in answers)
    assert answers[0].response.text.startswith("Local reply to: Say hello to number 0")
    assert answers[0].response.usage_metadata.prompt_token_count > 0
    assert json.loads(answers[3].response.text)["label"] in {"spam", "ham"}


@VERSIONS
def test_file_batch_upload_create_poll_download(served, version, tmp_path):
    sdk = client(served, version)
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "request": request(i)}) + "\n" for i in range(50)))
    uploaded = sdk.files.upload(file=path, config=types.UploadFileConfig(display_name="requests.jsonl", mime_type="jsonl"))
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == path.stat().st_size
    assert sdk.files.get(name=uploaded.name).display_name == "requests.jsonl"

    job = sdk.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "file batch"})
    done = finished(sdk, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    name = done.dest.file_name
    assert name.startswith("files/") and len(name.removeprefix("files/")) <= 40
    lines = [json.loads(line) for line in sdk.files.download(file=name).decode().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(f"k{i}" for i in range(50))
    assert all(line["response"]["candidates"][0]["content"]["parts"][0]["text"] for line in lines)
    assert all(line["response"]["usageMetadata"]["totalTokenCount"] > 0 for line in lines)


def test_a_large_upload_goes_in_chunks(served, tmp_path):
    """Over the SDK's 8 MiB chunk: several ``upload`` calls at growing offsets, ``finalize`` last."""
    sdk = client(served, "v1beta")
    path = tmp_path / "big.jsonl"
    padding = "x" * 2000
    path.write_text("".join(json.dumps({"key": f"k{i}", "request": request(i, labels={"pad": padding})}) + "\n" for i in range(4500)))
    assert path.stat().st_size > 8 * 1024 * 1024
    uploaded = sdk.files.upload(file=path, config={"display_name": "big.jsonl", "mime_type": "jsonl"})
    assert uploaded.size_bytes == path.stat().st_size


@VERSIONS
def test_list_pages_cancel_delete(served, version):
    sdk = client(served, version)
    names = [sdk.batches.create(model=MODEL, src=[{"contents": f"n{i}"}], config={"display_name": f"page-{i}"}).name for i in range(5)]
    for name in names:
        finished(sdk, name)
    pager = sdk.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    listed = [job.name for job in pager]  # the pager follows nextPageToken
    assert set(names) <= set(listed) and len(listed) == len(set(listed))
    assert listed.index(names[-1]) < listed.index(names[0])  # newest first

    sdk.batches.cancel(name=names[0])  # an ended batch: nothing changes
    assert sdk.batches.get(name=names[0]).state.name == "JOB_STATE_SUCCEEDED"
    sdk.batches.delete(name=names[0])
    with pytest.raises(errors.ClientError) as caught:
        sdk.batches.get(name=names[0])
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"


def test_cancel_a_running_batch(served):
    """Cancel: a batch still running ends CANCELLED, its rows cancelled or done."""
    sdk = client(served, "v1beta")
    slow = httpx.put(f"{served}/v1/_local/faults", json={"row_delay": 2.0}, headers={"x-goog-api-key": KEY})
    assert slow.status_code == 200, slow.text  # the service's local extension: rows take their time
    job = sdk.batches.create(model=MODEL, src=[{"contents": f"n{i}", "metadata": {"key": f"c{i}"}} for i in range(3)])
    httpx.put(f"{served}/v1/_local/faults", json={}, headers={"x-goog-api-key": KEY})
    sdk.batches.cancel(name=job.name)
    done = finished(sdk, job.name)
    assert done.state.name == "JOB_STATE_CANCELLED"
    answers = done.dest.inlined_responses
    assert [a.metadata["key"] for a in answers] == ["c0", "c1", "c2"]
    cancelled = [a for a in answers if a.error is not None]
    assert cancelled and all(a.error.code == 499 and "cancelled" in a.error.message for a in cancelled)


@VERSIONS
def test_errors_unknown_batch_and_wrong_key(served, version):
    sdk, wrong = client(served, version), client(served, version, key="wrong-key")  # held: a dropped client closes its connections
    with pytest.raises(errors.ClientError) as caught:
        sdk.batches.get(name="batches/000000000000000000000000")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as caught:
        wrong.batches.list()
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "wrong-key" not in str(caught.value)
    with pytest.raises(errors.ClientError) as caught:
        sdk.batches.create(model=MODEL, src=[{"contents": [{"role": "robot", "parts": [{"text": "hi"}]}]}])
    assert caught.value.code == 400 and "requests[0].request.contents[0].role" in caught.value.message
