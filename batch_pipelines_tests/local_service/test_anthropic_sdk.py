"""The official anthropic SDK runs the Message Batches workflow against ``batch-pipelines serve --profile anthropic``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from batch_pipelines_tests.support.waiting import wait_until

MODEL = "claude-haiku-4-5"
KEY = "sk-ant-local-test"


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    """The service posing as Anthropic, in its own process, as a user starts it; its base URL."""
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
               "--profile", "anthropic", "--speed", "instant", "--api-key", KEY]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1", first)
        assert match, first + server.stderr.read()
        yield match.group(1)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0
        assert "Traceback" not in server.stderr.read()


def set_faults(base_url: str, plan: dict) -> None:
    answer = httpx.put(f"{base_url}/v1/_local/faults", json=plan, headers={"x-api-key": KEY})
    assert answer.status_code == 200, answer.text


def client(base_url: str, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0)


def request(i: int, **params) -> dict:
    return {
        "custom_id": f"row-{i}",
        "params": {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": f"Say hello to number {i}"}], **params},
    }


def ended(sdk: anthropic.Anthropic, batch_id: str):
    def check():
        batch = sdk.messages.batches.retrieve(batch_id)
        return batch if batch.processing_status == "ended" else None

    return wait_until(check, interval=0.05)


def test_create_retrieve_results_list_cancel_delete(served):
    sdk = client(served)
    tool = {"name": "label", "description": "the label", "input_schema": {
        "type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}}, "required": ["label"]}}
    requests = [request(i) for i in range(4)] + [
        request(4, system="You label texts.", tools=[tool], tool_choice={"type": "tool", "name": "label"})
    ]
    batch = sdk.messages.batches.create(requests=requests)
    assert batch.type == "message_batch" and batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600

    done = ended(sdk, batch.id)
    assert done.request_counts.succeeded == 5 and done.request_counts.processing == 0
    assert done.request_counts.errored == done.request_counts.canceled == done.request_counts.expired == 0
    assert done.ended_at is not None and done.results_url.startswith(served)

    results = {r.custom_id: r.result for r in sdk.messages.batches.results(batch.id)}
    assert set(results) == {f"row-{i}" for i in range(5)}
    assert all(r.type == "succeeded" for r in results.values())
    message = results["row-0"].message
    assert message.role == "assistant" and message.model == MODEL and "number 0" in message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    forced = results["row-4"].message
    assert forced.stop_reason == "tool_use" and forced.content[0].type == "tool_use"
    assert forced.content[0].name == "label" and forced.content[0].input["label"] in ("a", "b")

    # Pagination: newest first, two at a time, with after_id and before_id.
    ids = [sdk.messages.batches.create(requests=[request(i)]).id for i in range(4)]
    first = sdk.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[:1:-1] and first.has_more and first.last_id == ids[2]
    everything = [b.id for b in sdk.messages.batches.list(limit=2)]  # the SDK follows after_id
    assert everything == [*reversed(ids), batch.id]
    newer = sdk.messages.batches.list(limit=2, before_id=ids[0])
    assert [b.id for b in newer.data] == [ids[2], ids[1]]

    # Cancel: a batch still running goes canceling, then ended with its rows canceled or done.
    set_faults(served, {"row_delay": 2.0})  # the service's local extension: rows take their time
    slow = sdk.messages.batches.create(requests=[request(i) for i in range(3)])
    set_faults(served, {})
    canceled = sdk.messages.batches.cancel(slow.id)
    assert canceled.processing_status in ("canceling", "ended") and canceled.cancel_initiated_at is not None
    after = ended(sdk, slow.id)
    counts = after.request_counts
    assert counts.canceled >= 1 and counts.canceled + counts.succeeded == 3 and after.cancel_initiated_at
    kinds = {r.result.type for r in sdk.messages.batches.results(slow.id)}
    assert kinds <= {"canceled", "succeeded"}

    # Delete: ended batches only; then it is gone.
    deleted = sdk.messages.batches.delete(batch.id)
    assert deleted.id == batch.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.retrieve(batch.id)


def test_errors_are_the_sdk_classes(served):
    sdk = client(served)
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.batches.retrieve("msgbatch_000000000000000000000000")
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        client(served, key="sk-ant-wrong").messages.batches.list()
    assert bad_key.value.body["error"]["type"] == "authentication_error" and "sk-ant-wrong" not in str(bad_key.value)
    with pytest.raises(anthropic.BadRequestError) as duplicate:
        sdk.messages.batches.create(requests=[request(1), request(1)])
    assert "Duplicate custom_id" in duplicate.value.message and duplicate.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        sdk.messages.batches.create(requests=[{"custom_id": "x", "params": {"model": MODEL, "messages": []}}])
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        sdk.messages.batches.create(requests=[request(1) | {"custom_id": "has spaces"}])
    running = sdk.messages.batches.create(requests=[request(1)])
    ended(sdk, running.id)
    assert [json.loads(r.to_json())["result"]["type"] for r in sdk.messages.batches.results(running.id)] == ["succeeded"]


def test_the_docs_curl_key_header_works(served):
    """Anthropic's docs send the key as ``x-api-key``; current SDKs as a bearer token."""
    answer = httpx.get(f"{served}/v1/messages/batches", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert answer.status_code == 200 and answer.json()["data"] == []
    refused = httpx.get(f"{served}/v1/messages/batches", headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
