"""The forwarding responder: a batch answered by a real-time server, and rows failed, not batches."""

from __future__ import annotations

import json

import openai

from batch_pipelines.local_service import ForwardingResponder, create_realtime_app
from batch_pipelines_tests.support.engine import file_lines, submit
from batch_pipelines_tests.support.request_files import chat_line
from batch_pipelines_tests.support.service import ServerThread
from batch_pipelines_tests.support.waiting import wait_for_batch


def test_forwarding_responder_runs_a_batch_on_a_realtime_server(local_service, tmp_path, monkeypatch):
    upstream = ServerThread(create_realtime_app(api_key="sk-upstream"))
    try:
        monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream")
        forward = ForwardingResponder(f"{upstream.url}/v1", api_key_env="UPSTREAM_KEY", concurrency=3, model="my-model")
        assert "sk-upstream" not in repr(forward) and "sk-upstream" not in json.dumps(forward.spec)
        forward.close()
        svc = local_service(responder=forward)
        batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(i) for i in range(12)])["id"])
        assert batch["status"] == "completed", batch
        output = file_lines(svc.engine, batch["output_file_id"])
        assert len(output) == 12 and {x["response"]["body"]["model"] for x in output} == {"my-model"}
        assert all("Classify text" in x["response"]["body"]["choices"][0]["message"]["content"] for x in output)
        assert "sk-upstream" not in (svc.data_dir / "state.sqlite3").read_bytes().decode("latin-1")

        # A wrong key upstream: every row fails with the upstream's 401, in the error file.
        monkeypatch.setenv("UPSTREAM_KEY", "sk-wrong")
        svc2 = local_service(responder=ForwardingResponder(f"{upstream.url}/v1", api_key_env="UPSTREAM_KEY"))
        failed = wait_for_batch(svc2.engine, submit(svc2.engine, tmp_path, [chat_line(0)])["id"])
        [error] = file_lines(svc2.engine, failed["error_file_id"])
        assert failed["output_file_id"] is None and error["response"]["status_code"] == 401
        client = openai.OpenAI(api_key="sk-upstream", base_url=f"{upstream.url}/v1", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content.endswith("hello")
    finally:
        upstream.stop()


def test_forwarding_to_nowhere_fails_rows_not_the_batch(local_service, tmp_path):
    svc = local_service(responder=ForwardingResponder("http://127.0.0.1:9/v1", timeout=2))
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(0), chat_line(1)])["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 2
    assert {e["response"]["status_code"] for e in file_lines(svc.engine, batch["error_file_id"])} == {502}
