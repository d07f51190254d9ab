"""Each fault plan, service-wide and per batch, and HTTP faults changed at runtime."""

from __future__ import annotations

import json
import time

import httpx
import openai
import orjson
import pytest

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan, HttpFault, ServiceError
from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.engine import file_lines, submit
from batch_pipelines_tests.support.request_files import chat_line, write_lines
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_until

ROWS = 60
ALL_IDS = {f"text_{i}" for i in range(ROWS)}


def _run(svc, tmp_path, *, metadata=None):
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(i) for i in range(ROWS)], metadata=metadata)["id"])
    return batch, file_lines(svc.engine, batch["output_file_id"]), file_lines(svc.engine, batch["error_file_id"])


def test_row_failures_land_in_the_error_file_with_their_status(local_service, tmp_path):
    plan = FaultPlan(seed=3, row_failures={429: 0.2, 500: 0.2, 400: 0.1})
    svc = local_service(faults=plan)
    batch, output, errors = _run(svc, tmp_path)
    assert batch["status"] == "completed"
    by_status = {}
    for line in errors:
        status = line["response"]["status_code"]
        by_status.setdefault(status, []).append(line)
        assert line["error"] is None and set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert set(by_status) == {429, 500, 400}
    assert by_status[429][0]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert {x["custom_id"] for x in output} | {x["custom_id"] for x in errors} == ALL_IDS
    assert batch["request_counts"] == {"total": ROWS, "completed": len(output), "failed": len(errors)}
    # Same seed, same rows: the plan is deterministic.
    _, _, again = _run(local_service(faults=plan), tmp_path)
    assert sorted(x["custom_id"] for x in again) == sorted(x["custom_id"] for x in errors)


def test_validation_failure_token_limit_exceeded(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(validation_error="token_limit_exceeded"))
    batch, output, errors = _run(svc, tmp_path)
    assert batch["status"] == "failed" and output == [] and errors == []
    [error] = batch["errors"]["data"]
    assert error["code"] == "token_limit_exceeded" and "kimi-k2.5" in error["message"]


def test_expiry_after_a_fraction_of_rows(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(expire_after=0.25))
    batch, output, errors = _run(svc, tmp_path)
    assert batch["status"] == "expired"
    assert len(output) == 15 and len(errors) == ROWS - 15
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert {x["custom_id"] for x in output + errors} == ALL_IDS


def test_corrupt_duplicate_and_unknown_output_lines(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(seed=1, corrupt_lines=1, duplicate_lines=2, unknown_lines=1))
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(i) for i in range(ROWS)])["id"])
    raw = svc.engine.file_content_path(batch["output_file_id"]).read_bytes().splitlines()
    parsed, broken = [], 0
    for line in raw:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            broken += 1
    ids = [x["custom_id"] for x in parsed]
    assert broken == 1 and len(raw) == ROWS + 2 + 1
    assert len(ids) - len(set(ids)) == 2
    assert len(set(ids) - ALL_IDS) == 1
    assert batch["request_counts"] == {"total": ROWS, "completed": ROWS, "failed": 0}


def test_rows_missing_from_both_files(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(missing_rows=3))
    batch, output, errors = _run(svc, tmp_path)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == ROWS
    assert len(ALL_IDS - {x["custom_id"] for x in output + errors}) == 3


def test_completed_without_output_file(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(no_output_file=True))
    batch, output, errors = _run(svc, tmp_path)
    assert batch["status"] == "completed" and batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["request_counts"]["completed"] == ROWS


def test_per_batch_plan_in_metadata_merges_over_the_service_plan(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(row_failures={500: 1.0}, missing_rows=2))
    per_batch = json.dumps({"row_failures": {"429": 0.5}, "seed": 9})
    batch, output, errors = _run(svc, tmp_path, metadata={FAULTS_METADATA_KEY: per_batch})
    assert {e["response"]["status_code"] for e in errors} == {429}
    assert len(output) + len(errors) == ROWS - 2  # missing_rows still comes from the service plan
    plain, _, plain_errors = _run(svc, tmp_path)
    assert {e["response"]["status_code"] for e in plain_errors} == {500}


@pytest.mark.parametrize(
    "value", ["{nope", '{"row_failures": {"429": "lots"}}', '{"surprise": 1}', '{"http_faults": [{"status": 500}]}']
)
def test_malformed_per_batch_plan_is_a_400(local_service, tmp_path, value):
    svc = local_service()
    with pytest.raises(ServiceError) as info:
        submit(svc.engine, tmp_path, [chat_line(0)], metadata={FAULTS_METADATA_KEY: value})
    assert info.value.status_code == 400 and info.value.param == "metadata"


def test_http_429_with_retry_after_for_the_first_calls(local_service, tmp_path):
    plan = FaultPlan(http_faults=[HttpFault(route="/v1/batches*", method="GET", status=429, times=2, retry_after=1.5)])
    svc = local_service(faults=plan)
    with httpx.Client(base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"}) as http:
        for _ in range(2):
            answer = http.get("/batches")
            assert answer.status_code == 429
            assert answer.headers["retry-after"] == "2" and answer.headers["retry-after-ms"] == "1500"
            assert answer.json()["error"]["type"] == "rate_limit_error"
        assert http.get("/batches").status_code == 200
        assert http.get("/files").status_code == 200  # other routes never matched


def test_http_500_then_the_sdk_retries_through(local_service, tmp_path):
    svc = local_service(faults=FaultPlan(http_faults=[HttpFault(route="/v1/files", method="POST", status=500, times=1)]))
    path = write_lines(tmp_path / "in.jsonl", [chat_line(0)])
    with pytest.raises(openai.InternalServerError):
        sdk(svc).files.create(file=path, purpose="batch")
    assert sdk(svc).files.create(file=path, purpose="batch").purpose == "batch"


def test_slow_responses(local_service):
    svc = local_service(faults=FaultPlan(http_faults=[HttpFault(route="*", status=None, times=None, delay=0.3)]))
    started = time.monotonic()
    assert sdk(svc).batches.list().data == []
    assert time.monotonic() - started >= 0.3


def test_faults_change_at_runtime(local_service, tmp_path):
    svc = local_service()
    client = sdk(svc)
    assert client.batches.list().data == []
    svc.set_faults(FaultPlan(http_faults=[HttpFault(route="/v1/batches", status=503, times=1)]))
    with pytest.raises(openai.APIStatusError) as info:
        client.batches.list()
    assert info.value.status_code == 503
    assert client.batches.list().data == []
    # Over HTTP too, with the service key; the admin route itself is never faulted.
    with httpx.Client(base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"}) as http:
        plan = {"http_faults": [{"route": "*", "status": 429, "times": 1}], "row_failures": {"500": 1.0}}
        assert http.put("/_local/faults", json=plan).status_code == 200
        assert http.get("/_local/faults").json()["http_faults"][0]["status"] == 429
        assert http.get("/batches").status_code == 429
        assert http.get("/batches").status_code == 200
        assert http.put("/_local/faults", json={"bogus": 1}).status_code == 400
        assert httpx.put(f"{svc.base_url}/_local/faults", json={}).status_code == 401
    batch, output, errors = _run(svc, tmp_path)  # the row part applies to new batches
    assert output == [] and len(errors) == ROWS


def test_dropped_connections_and_answers_lost_after_the_call_took_effect(local_service, tmp_path):
    svc = local_service()
    path = write_lines(tmp_path / "in.jsonl", [chat_line(0)])
    stored = lambda: len(svc.engine.list_files()["data"])  # noqa: E731

    def upload(timeout: float = 5.0) -> httpx.Response:
        with path.open("rb") as fh:
            return httpx.post(
                svc.base_url + "/files",
                headers={"Authorization": f"Bearer {svc.api_key}"},
                files={"file": ("in.jsonl", fh)},
                data={"purpose": "batch"},
                timeout=timeout,
            )

    # Cut before the service saw the call: a transport error (no status at all), and nothing happened.
    svc.set_faults(FaultPlan(http_faults=[HttpFault(route="/v1/files", drop=True, times=1)]))
    with pytest.raises(httpx.TransportError):
        upload()
    assert stored() == 0
    # Served, then cut / answered 502 / answered after the client gave up: the file exists each time.
    for fault, error in (
        (HttpFault(route="/v1/files", drop=True, after=True), httpx.TransportError),
        (HttpFault(route="/v1/files", status=502, after=True), None),
        (HttpFault(route="/v1/files", status=None, delay=1.0, after=True), httpx.ReadTimeout),
    ):
        before = stored()
        svc.set_faults(FaultPlan(http_faults=[fault]))
        if error is None:
            assert upload().status_code == 502
        else:
            with pytest.raises(error):
                upload(timeout=0.3)
        wait_until(lambda: stored() == before + 1)  # a late answer's call may still be finishing
    # The rule is spent: the next call is answered normally.
    assert upload().status_code == 200
