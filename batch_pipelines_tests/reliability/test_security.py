"""The API key stays secret through the whole pipeline; hostile text cannot break a request line;
the service listens on the loopback unless told otherwise.

The service's own guards (a key on every route, path traversal, upload size) are tested in
``local_service/test_security.py``, the provider's (exceptions, log records, reprs) in
``providers/test_secrets.py``; here the pipeline runs end to end with a recognisable key.
"""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import orjson
import pandas as pd
import pytest

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines_tests.support.clients import capture_logs
from batch_pipelines_tests.support.driver import KEY_ENV, Harness, build, make_resource, make_texts
from batch_pipelines_tests.reliability.world import batch_faults
from batch_pipelines_tests.support.waiting import wait_until

DAY, OTHER_DAY = "2024-01-01", "2024-01-02"
CANARY = "sk-CANARY-5e1f9a7c3b2d4e6f8a0b"
WRONG_CANARY = "sk-CANARY-WRONG-9d8c7b6a5f4e"


def _files_holding(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """Every file under ``root`` whose bytes hold one of ``secrets``."""
    needles = [s.encode() for s in secrets]
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    return found


def test_the_api_key_appears_nowhere(local_service, tmp_path, monkeypatch, capfd):
    svc = local_service(api_key=CANARY)
    monkeypatch.setenv(KEY_ENV, CANARY)
    texts = make_texts(20)
    pipeline = build(source=texts, batch_tags=batch_faults({None: FaultPlan(row_failures={500: 0.2}, seed=1)}))
    resource = make_resource(svc.base_url, tmp_path / "storage", delete_files_after_download=True)
    with dg.instance_for_test(temp_dir=str(_mkdir(tmp_path / "dagster"))) as instance, capture_logs(logging.DEBUG) as records:
        h = Harness(instance, pipeline, texts, resource)
        # Retries and an answer lost after the batch was created: the warning paths log errors.
        svc.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/batches", method="POST", status=502, after=True, times=1),)))
        h.submit([DAY])
        h.drive([DAY])
        assert set(h.results(DAY)["outcome"]) == {"succeeded"}
        # A run refused for a wrong key: its failure, stack trace and logs go to the event log too.
        monkeypatch.setenv(KEY_ENV, WRONG_CANARY)
        refused = h.materialize([h.texts, h.pipeline.requests_asset, h.pipeline.batch_asset], OTHER_DAY, raise_on_error=False)
        assert not refused.success
        monkeypatch.setenv(KEY_ENV, CANARY)

        secrets = (CANARY, WRONG_CANARY)
        texts_seen: list[str] = [repr(h.resource), str(h.resource), h.cursor or ""]
        with h.resource.get_provider() as provider:
            texts_seen += [repr(provider), str(vars(provider))]
        for run in instance.get_runs():
            texts_seen.append(json.dumps(run.run_config, default=str) + repr(run.tags))
            texts_seen += [repr(entry) for entry in instance.all_logs(run.run_id)]
        for key in (h.pipeline.requests_asset.key, h.pipeline.batch_asset.key, h.pipeline.results_asset.key):
            texts_seen += [repr(r) for r in instance.fetch_materializations(key, limit=100).records]
            texts_seen += [repr(r) for r in instance.fetch_observations(key, limit=100).records]
        texts_seen += [r.getMessage() + repr(r.args) + repr(r.exc_info) for r in records]
        failure = refused.failure_data_for_node("classify_batch").error
        texts_seen.append(failure.to_string())
        assert "401" in failure.to_string() or "Incorrect API key" in failure.to_string()
        instance_root = Path(instance.root_directory)

        leaks = [t for t in texts_seen if any(s in t for s in secrets)]
        assert not leaks, leaks[0][:500]
        # The instance (runs, event log, compute logs, stored DataFrames), the request, manifest and
        # result files, and the service's data dir (its SQLite state, stored files, worker log).
        for root in (instance_root, tmp_path / "storage", svc.data_dir):
            assert not _files_holding(root, secrets), root
    out, err = capfd.readouterr()
    assert not any(s in out + err for s in secrets)
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "x.bin").write_bytes(b"\x00" + CANARY.encode() + b"\xff")
    assert _files_holding(tmp_path / "planted", secrets)  # the scan finds a key where there is one
    assert len(records) > 100  # the capture saw the run's logging, so "nothing in it" means something


HOSTILE = [
    "line\nbreak",
    "carriage\rreturn\r\n",
    'quote " and \\" escaped',
    "\"}]}\n{\"custom_id\": \"forged\", \"method\": \"POST\"}",
    "tab\there\x00nul\x1besc\x7fdel",
    "separators \u2028 \u2029 and \ufeff bom",
    "emoji 🙂 and é",
    "{curly} {{braces}}",
]


def test_hostile_keys_and_texts_cannot_break_a_request_line(harness, service):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"text_id": [f"id {t}" for t in HOSTILE], "text": HOSTILE})

    h = harness(rows=len(HOSTILE), edit=edit)
    h.submit([DAY])
    h.drive([DAY])

    [uploaded] = service.engine.list_files(purpose="batch")["data"]
    lines = service.engine.file_content_path(uploaded["id"]).read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(HOSTILE) + 1  # one line per row, nothing split
    sent = [orjson.loads(line) for line in lines[:-1]]
    assert [r["body"]["messages"][-1]["content"] for r in sent] == [f"Please classify the following text: {t}" for t in HOSTILE]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", r["custom_id"]) for r in sent) and "forged" not in [r["custom_id"] for r in sent]
    frame = h.results(DAY)
    assert frame["text"].tolist() == HOSTILE and frame["text_id"].tolist() == [f"id {t}" for t in HOSTILE]
    assert set(frame["outcome"]) == {"succeeded"} and frame["custom_id"].is_unique
    assert sorted(frame["custom_id"]) == sorted(r["custom_id"] for r in sent)


def test_the_service_binds_the_loopback_unless_told_otherwise(tmp_path):
    command = [sys.executable, "-m", "batch_pipelines.cli", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = server.stdout.readline()
        port = int(re.search(r":(\d+)/v1", first).group(1))
        addresses = wait_until(lambda: _listening(port), interval=0.05)  # the URL is printed between bind and listen
        assert addresses == ["127.0.0.1"], first
    finally:
        server.terminate()
        server.wait(timeout=20)


def _listening(port: int) -> list[str]:
    """Addresses with a socket listening on ``port``, from the kernel's tables (no connection made)."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp on this system")
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    addresses.append(".".join(str(b) for b in raw[::-1]))
                else:
                    addresses.append(raw.hex())
    return addresses


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
