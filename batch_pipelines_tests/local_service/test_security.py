"""Auth, error shapes, oversized uploads and paths that try to leave the data directory."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

from batch_pipelines.profiles import custom_profile
from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.request_files import CHAT, chat_line, write_lines

ERROR_KEYS = {"message", "type", "param", "code"}


def test_every_route_wants_the_bearer_key(local_service, tmp_path):
    svc = local_service(api_key="sk-test-secret")
    # Every route the app has, with real ids in its path parameters, and one it does not have.
    stored = sdk(svc).files.create(file=write_lines(tmp_path / "in.jsonl", [chat_line(0)]), purpose="batch")
    batch = sdk(svc).batches.create(input_file_id=stored.id, endpoint=CHAT, completion_window="24h")
    ids = {"file_id": stored.id, "batch_id": batch.id}
    calls = [(method, route.path.format(**ids)) for route in svc.app.routes for method in sorted(route.methods)]
    assert len(calls) >= 10
    for method, path in [*calls, ("GET", "/v1/nowhere")]:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-test-secret"}):
            answer = httpx.request(method, svc.base_url.removesuffix("/v1") + path, headers=headers)
            assert answer.status_code == 401, (method, path)
            if method != "HEAD":
                error = answer.json()["error"]
                assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error"
                assert "sk-wrong" not in answer.text and "sk-test-secret" not in answer.text
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(api_key="sk-nope", base_url=svc.base_url, max_retries=0).batches.list()
    assert info.value.code == "invalid_api_key"


def test_unknown_ids_and_routes_are_openai_404s(local_service):
    svc = local_service()
    client = sdk(svc)
    for call in (
        lambda: client.files.retrieve("file-" + "a" * 24),
        lambda: client.files.content("file-nope"),
        lambda: client.files.delete("file-" + "b" * 24),
        lambda: client.batches.retrieve("batch_" + "c" * 24),
        lambda: client.batches.cancel("batch_nope"),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert set(info.value.body) == ERROR_KEYS and info.value.body["type"] == "invalid_request_error"
    answer = httpx.get(svc.base_url + "/models", headers={"Authorization": f"Bearer {svc.api_key}"})
    assert answer.status_code == 404 and set(answer.json()["error"]) == ERROR_KEYS
    answer = httpx.delete(svc.base_url + "/batches", headers={"Authorization": f"Bearer {svc.api_key}"})
    assert answer.status_code == 405 and set(answer.json()["error"]) == ERROR_KEYS


def test_oversized_upload_is_refused_by_content_length(local_service):
    svc = local_service(profile=custom_profile("http://x/v1", max_file_bytes=100_000))
    headers = {"Authorization": f"Bearer {svc.api_key}"}
    body = b"x" * 1_000_000
    answer = httpx.post(svc.base_url + "/files", headers=headers, files={"file": ("big.jsonl", body)}, data={"purpose": "batch"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
    assert list((svc.data_dir / "tmp").iterdir()) == [] and list((svc.data_dir / "files").iterdir()) == []


def test_oversized_streamed_upload_stops_early(local_service):
    limit = 200_000
    svc = local_service(profile=custom_profile("http://x/v1", max_file_bytes=limit))
    boundary = "bnd"
    sent = 0

    def body():  # chunked: no Content-Length, the service must count while streaming
        nonlocal sent
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'.encode()
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'.encode()
        for _ in range(10_000):  # 640 MB if it were read whole
            sent += 65536
            yield b"y" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Authorization": f"Bearer {svc.api_key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        answer = httpx.post(svc.base_url + "/files", headers=headers, content=body(), timeout=30)
        assert answer.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection on the oversized body; what matters is below
    assert sent < 10_000 * 65536, "the upload was read to the end"
    assert list((svc.data_dir / "files").iterdir()) == []


def _field_flood(boundary: str, fields: int, value_bytes: int, counter: list[int]):
    """A chunked multipart body of ``fields`` small form fields and no file part, counting the chunks sent."""
    for start in range(0, fields, 100):
        chunk = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{"v" * value_bytes}\r\n'.encode()
            for i in range(start, min(start + 100, fields))
        )
        counter[0] += 1
        yield chunk
    yield f"--{boundary}--\r\n".encode()


# Many fields of 3 KB (past the fields' bytes at the 11th), or a few more tiny ones than an upload has parts.
@pytest.mark.parametrize(("fields", "value_bytes"), [(10_000, 3000), (33, 1)])
def test_a_flood_of_form_fields_is_refused_early_and_the_service_stays_healthy(local_service, fields, value_bytes):
    svc = local_service(profile="openai")
    boundary = "flood"
    chunks = [0]
    headers = {"Authorization": f"Bearer {svc.api_key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        answer = httpx.post(svc.base_url + "/files", headers=headers, content=_field_flood(boundary, fields, value_bytes, chunks), timeout=60)
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "request_too_large"
    except httpx.HTTPError:
        pass  # the server may close the connection on the refused body; what matters is below
    assert chunks[0] == 1 or chunks[0] < fields // 100, "the flood was read to the end"
    assert list((svc.data_dir / "tmp").iterdir()) == [] and list((svc.data_dir / "files").iterdir()) == []
    # Healthy: it lists, and takes an ordinary upload.
    client = httpx.Client(base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"})
    assert client.get("/files").json()["data"] == []
    ok = client.post("/files", data={"purpose": "batch"}, files={"file": ("r.jsonl", b'{"a": 1}\n')})
    assert ok.status_code == 200 and ok.json()["bytes"] == 9


def test_file_names_and_ids_never_leave_the_data_dir(local_service, tmp_path):
    svc = local_service()
    client = sdk(svc)
    path = write_lines(tmp_path / "in.jsonl", [chat_line(0)])
    for name in ("../../../../tmp/escape.jsonl", "/etc/passwd.jsonl", "..\\..\\win.jsonl", "a/../../b.jsonl"):
        stored = client.files.create(file=(name, path.read_bytes()), purpose="batch")
        assert "/" not in stored.filename and "\\" not in stored.filename and stored.filename.endswith(".jsonl")
        assert (svc.data_dir / "files" / stored.id).is_file()
    assert not os.path.exists("/tmp/escape.jsonl")
    headers = {"Authorization": f"Bearer {svc.api_key}"}
    for file_id in ("..%2F..%2Fstate.sqlite3", "..", "%2e%2e", "file-..%2F..%2Fstate.sqlite3", "state.sqlite3"):
        answer = httpx.get(f"{svc.base_url}/files/{file_id}/content", headers=headers)
        assert answer.status_code == 404, file_id
        assert b"SQLite" not in answer.content
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="../state.sqlite3", endpoint=CHAT, completion_window="24h")
    for batch_id in ("..%2F..%2Fstate.sqlite3", "batch_..", "%2e%2e%2f"):
        for method, tail in (("GET", ""), ("POST", "/cancel")):
            assert httpx.request(method, f"{svc.base_url}/batches/{batch_id}{tail}", headers=headers).status_code == 404


def test_malformed_uploads_are_400s(local_service):
    svc = local_service()
    headers = {"Authorization": f"Bearer {svc.api_key}"}
    no_file = httpx.post(svc.base_url + "/files", headers=headers, files={"other": ("a.jsonl", b"x")}, data={"purpose": "batch"})
    no_purpose = httpx.post(svc.base_url + "/files", headers=headers, files={"file": ("a.jsonl", b"{}\n")})
    not_multipart = httpx.post(svc.base_url + "/files", headers=headers, json={"file": "x"})
    for answer, param in ((no_file, "file"), (no_purpose, "purpose"), (not_multipart, None)):
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    assert list((svc.data_dir / "tmp").iterdir()) == []
