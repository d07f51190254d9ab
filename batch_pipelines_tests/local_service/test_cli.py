"""``batch-pipelines serve`` starts the service and prints where it listens."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import openai
import pytest

from batch_pipelines.local_service import BatchEngine
from batch_pipelines_tests.support.realtime import RealtimeServer
from batch_pipelines_tests.support.request_files import CHAT, chat_line, write_lines
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_until


@pytest.mark.parametrize("key_from", ["flag", "env", "file"])
def test_serve_prints_its_url_and_answers_the_sdk(tmp_path, key_from):
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
               "--profile", "moonshot", "--speed", "instant", "--time-scale", "2"]
    env = {k: v for k, v in os.environ.items() if k != "BATCH_PIPELINES_LOCAL_API_KEY"}
    if key_from == "flag":
        command += ["--api-key", "sk-cli"]
    elif key_from == "file":
        (tmp_path / "key").write_text("sk-cli\n")
        command += ["--api-key-file", str(tmp_path / "key")]
    else:
        env["BATCH_PIPELINES_LOCAL_API_KEY"] = "sk-cli"
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = server.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", first)
        assert match, first + server.stderr.read()
        client = openai.OpenAI(api_key="sk-cli", base_url=match.group(1), max_retries=5)
        uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(0)]), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert batch.expires_at == batch.created_at + 12 * 3600  # 24 h at time scale 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(api_key="sk-other", base_url=match.group(1), max_retries=0).batches.list()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0
        assert "Traceback" not in server.stderr.read()

    with BatchEngine(tmp_path / "data", worker="none") as engine:  # the state outlives the server
        assert wait_for_batch(engine, batch.id)["status"] == "completed"


@pytest.mark.parametrize(
    ("flags", "env", "refusal"),
    [
        (["--api-key", ""], {}, "is empty"),
        ([], {"BATCH_PIPELINES_LOCAL_API_KEY": " "}, "is empty"),
        (["--host", "0.0.0.0"], {}, "without an API key"),
    ],
)
def test_serve_refuses_an_empty_key_and_no_key_beyond_the_loopback(tmp_path, flags, env, refusal):
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *flags]
    clean = {k: v for k, v in os.environ.items() if k != "BATCH_PIPELINES_LOCAL_API_KEY"}
    done = subprocess.run(command, capture_output=True, text=True, env={**clean, **env}, timeout=60)
    assert done.returncode != 0 and refusal in done.stderr
    assert "Traceback" not in done.stderr



def test_serve_forwards_every_request_to_a_realtime_server(tmp_path):
    upstream = RealtimeServer(api_key="sk-upstream-cli")
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
               "--forward-url", upstream.base_url, "--forward-model", "my-llama", "--forward-concurrency", "2",
               "--forward-api-key-env", "UPSTREAM_CLI_KEY"]
    env = {**{k: v for k, v in os.environ.items() if k != "BATCH_PIPELINES_LOCAL_API_KEY"}, "UPSTREAM_CLI_KEY": upstream.api_key}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", server.stdout.readline())
        assert match, server.stderr.read()
        assert upstream.base_url in server.stdout.readline() + server.stdout.readline()  # "no API key set", then the forwarding line
        client = openai.OpenAI(api_key="unused", base_url=match.group(1), max_retries=5)
        uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(i) for i in range(3)]), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).status == "completed")
        done = client.batches.retrieve(batch.id)
        rows = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(row["custom_id"] for row in rows) == sorted(chat_line(i)["custom_id"] for i in range(3))
        assert {row["response"]["body"]["model"] for row in rows} == {"my-llama"}
        assert all(row["response"]["body"]["id"].startswith("chatcmpl-upstream") for row in rows)
        assert len(upstream.received) == 3
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0
        upstream.stop()
    assert "Traceback" not in server.stderr.read()


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--forward-model", "my-llama"], "need --forward-url"),
        (["--forward-url", "http://127.0.0.1:9/v1", "--forward-api-key-env", "sk-pasted-0123456789"], "must name an environment variable"),
        (["--forward-url", "http://127.0.0.1:9/v1", "--forward-api-key-env", "NO_SUCH_UPSTREAM_KEY"], "NO_SUCH_UPSTREAM_KEY"),
    ],
)
def test_serve_refuses_forwarding_options_it_cannot_honour_without_echoing_a_key(tmp_path, flags, refusal):
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *flags]
    clean = {k: v for k, v in os.environ.items() if k not in ("BATCH_PIPELINES_LOCAL_API_KEY", "NO_SUCH_UPSTREAM_KEY")}
    done = subprocess.run(command, capture_output=True, text=True, env=clean, timeout=60)
    assert done.returncode != 0 and refusal in done.stderr, done.stderr
    assert "sk-pasted-0123456789" not in done.stderr + done.stdout and "Traceback" not in done.stderr
