"""The local provider: no server, no key; a worker that outlives its caller; one directory, one state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines.providers import (
    BadRequestError,
    BatchStatus,
    LocalProvider,
    NotFoundError,
    default_local_dir,
    make_provider,
)
from batch_pipelines_tests.support.request_files import CHAT, custom_ids, write_requests
from batch_pipelines_tests.support.waiting import wait_terminal


@pytest.fixture(autouse=True)
def _short_lived_workers(monkeypatch):
    # Detached workers exit after this many idle seconds instead of a minute after the tests.
    monkeypatch.setenv("BATCH_PIPELINES_WORKER_IDLE", "3")


def _in_other_process(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_batch_from_upload_to_results_in_process(tmp_path):
    with make_provider("local", data_dir=tmp_path / "local", pose_as="moonshot") as provider:
        assert isinstance(provider, LocalProvider)
        assert provider.profile.name == "moonshot" and provider.profile.delete_files_after_download
        faults = FaultPlan(row_failures={400: 0.3}, seed=1).to_json()
        batch = provider.submit(
            write_requests(tmp_path / "r.jsonl", 10, model="kimi-k2.5"),
            endpoint=CHAT,
            metadata={"partition": "p1", FAULTS_METADATA_KEY: faults},
        )
        done = wait_terminal(provider, batch.id)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.total == 10
        files = provider.download_results(done, tmp_path / "out")
        assert sorted(custom_ids(files.output_path) + custom_ids(files.error_path)) == sorted(
            f"row-{i}" for i in range(10)
        )
        assert [b.id for b in provider.find_batches({"partition": "p1"})] == [batch.id]
        assert [b.id for b in provider.list_batches(page_size=1)] == [batch.id]

        assert provider.delete_batch_files(done) == [done.input_file_id, done.output_file_id, done.error_file_id]
        provider.delete_batch_files(done)  # again: harmless
        with pytest.raises(NotFoundError):
            provider.download_file(done.output_file_id, tmp_path / "gone.jsonl")


def test_errors_are_the_http_clients_typed_errors(tmp_path):
    with LocalProvider(tmp_path, profile="openai", worker="none") as provider:
        with pytest.raises(BadRequestError) as raised:
            provider.create_batch("file-000000000000000000000000", endpoint=CHAT)
        assert raised.value.status_code == 400 and raised.value.param == "input_file_id"
        with pytest.raises(NotFoundError):
            provider.retrieve_batch("batch_000000000000000000000000")
        with pytest.raises(ValueError, match="completion_window"):
            provider.create_batch("file-000000000000000000000000", endpoint=CHAT, completion_window="3d")


def test_a_second_process_sees_the_same_batch(tmp_path):
    data_dir = tmp_path / "local"
    with LocalProvider(data_dir) as provider:
        batch = provider.submit(write_requests(tmp_path / "r.jsonl", 3), endpoint=CHAT, metadata={"k": "v"})
        done = wait_terminal(provider, batch.id)
    seen = _in_other_process(
        "from batch_pipelines.providers import LocalProvider\n"
        f"p = LocalProvider({str(data_dir)!r}, worker='none')\n"
        "b = p.find_batches({'k': 'v'})[0]\n"
        "print(b.model_dump_json(exclude={'raw'}))\n"
    )
    assert orjson.loads(seen) == orjson.loads(done.model_dump_json(exclude={"raw"}))


def test_a_batch_outlives_the_process_that_created_it(tmp_path):
    data_dir = tmp_path / "local"
    requests = write_requests(tmp_path / "r.jsonl", 5)
    # Realistic speed: validating alone takes about 2 s, so the creator exits long before the end.
    batch_id = _in_other_process(
        "from pathlib import Path\n"
        "from batch_pipelines.providers import LocalProvider\n"
        f"p = LocalProvider({str(data_dir)!r}, speed='realistic')\n"
        f"print(p.submit(Path({str(requests)!r}), endpoint={CHAT!r}).id)\n"
    )
    # This process only observes: the creator's detached worker is the only one.
    with LocalProvider(data_dir, worker="none") as observer:
        assert not observer.retrieve_batch(batch_id).is_terminal
        done = wait_terminal(observer, batch_id)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == 5


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert default_local_dir() == tmp_path / "dh" / "batch_pipelines" / "local"
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_local_dir() == tmp_path / "home" / ".batch_pipelines" / "local"
    with LocalProvider(worker="none") as provider:  # created where the default says
        assert provider.data_dir == Path(tmp_path / "home" / ".batch_pipelines" / "local")
        assert (provider.data_dir / "state.sqlite3").exists()


def test_importing_the_providers_imports_no_dagster():
    loaded = _in_other_process(
        "import sys, batch_pipelines.providers\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster'))))\n"
    )
    assert loaded == ""


def test_repr_shows_no_secrets_and_the_directory(tmp_path):
    with LocalProvider(tmp_path, worker="none") as provider:
        assert repr(provider) == f"LocalProvider(data_dir={str(tmp_path)!r}, profile='openai')"
