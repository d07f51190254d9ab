"""Runs in processes of their own: runs that die or are interrupted half way, and racing submits.

``python -m batch_pipelines_tests.support.child_runs MODE BASE_URL STORAGE_DIR PARTITION`` with
``DAGSTER_HOME`` set to the test's instance and the API key in ``KEY_ENV`` (:func:`start_child`):

- ``crash``: materializes ``classify_batch``; the process exits (``os._exit``, no clean-up, no
  event written) the moment the provider has accepted the first batch, before Dagster records it.
- ``blocking``: materializes the whole blocking pipeline and waits inside the run; the test
  interrupts it with SIGINT (what terminating a run does to its worker).
- ``pipeline``: materializes the whole blocking pipeline for the partition, as a run worker of
  a deployment would; with ``CHILD_SHARED_TEXTS=1`` every day has the same texts (answers one day
  bought can be reused by another). Exit status 0 when the run succeeded.
- ``race``: loads the pipeline, prints ``ready``, waits for a line on stdin, then materializes
  ``classify_batch`` in one run; exit status 0 when the run succeeded. Several race to submit one
  partition.

``CHILD_PROFILE`` names the provider shape (``support/profiles.py``, default ``openai``): the
resource's provider and the spec the child runs with; ``CHILD_STORAGE_OPTIONS`` (JSON) the
resource's ``storage_options`` (an S3 server's endpoint).
"""

import faulthandler
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from batch_pipelines.providers import AnthropicProvider, Batch, BatchProvider, GeminiProvider, OpenAICompatibleProvider
from batch_pipelines.pipeline import BatchProviderResource
from batch_pipelines.submission import RecordedBatches
from batch_pipelines_tests.support.driver import KEY_ENV, Harness, make_texts
from batch_pipelines_tests.support.driver import build as _build
from batch_pipelines_tests.support.driver import make_resource as _make_resource
from batch_pipelines_tests.support.profiles import PROFILES

CRASH_EXIT = 17
_REPO = Path(__file__).resolve().parents[2]


class _DiesAfterSubmit(OpenAICompatibleProvider):
    """The real HTTP client, except that the process dies right after a batch is accepted."""

    def submit(self, path: Path, **options: Any) -> Batch:
        super().submit(path, **options)
        os._exit(CRASH_EXIT)


class _AnthropicDiesAfterSubmit(AnthropicProvider):
    """Anthropic's HTTP client, except that the process dies right after a batch is accepted:
    inside the recorded tags' submit, so the intent is written and its batch id never is."""

    def submit(self, path: Path, **options: Any) -> Batch:
        super().submit(path, **options)
        os._exit(CRASH_EXIT)


class _GeminiDiesAfterSubmit(GeminiProvider):
    """Gemini's HTTP client, except that the process dies right after a batch is accepted: its
    tags are in its displayName, nowhere in Dagster."""

    def submit(self, path: Path, **options: Any) -> Batch:
        super().submit(path, **options)
        os._exit(CRASH_EXIT)


class _DyingResource(BatchProviderResource):
    def get_provider(self) -> BatchProvider:
        provider = super().get_provider()
        if isinstance(provider, RecordedBatches):  # the records where the real resource keeps them
            provider.close()
            dying = _AnthropicDiesAfterSubmit(self.profile, api_key=self.api_key, base_url=self.base_url)
            return RecordedBatches(dying, provider.storage, provider.folder)
        provider.close()
        dying = _GeminiDiesAfterSubmit if self.profile.protocol == "gemini" else _DiesAfterSubmit
        return dying(self.profile, api_key=self.api_key, base_url=self.base_url)


def start_child(mode: str, base_url: str, storage: Path, partition: str, *, home: str, key: str, **popen: Any) -> subprocess.Popen:
    """This module as a process running ``mode`` against the instance in ``home`` (in the repository, or in ``cwd``)."""
    env = {**os.environ, "DAGSTER_HOME": home, KEY_ENV: key, "PYTHONPATH": str(_REPO), **popen.pop("env", {})}
    command = [sys.executable, "-m", "batch_pipelines_tests.support.child_runs", mode, base_url, str(storage), partition]
    return subprocess.Popen(command, cwd=popen.pop("cwd", _REPO), env=env, **popen)


def main(mode: str, base_url: str, storage_dir: str, partition: str) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that waits too long asks where it is
    instance = dg.DagsterInstance.get()
    texts = make_texts(int(os.environ.get("CHILD_ROWS", "8")), _shared_texts if os.environ.get("CHILD_SHARED_TEXTS") else None)
    shape = PROFILES[os.environ.get("CHILD_PROFILE", "openai")]

    storage_options = json.loads(os.environ.get("CHILD_STORAGE_OPTIONS", "{}"))

    def make_resource(base_url: str, storage_dir: str, **overrides: Any) -> BatchProviderResource:
        return _make_resource(base_url, storage_dir, provider=shape.provider, storage_options=storage_options, **overrides)

    def build(**options: Any) -> Any:
        return _build(spec=shape.spec, **options)

    if mode == "crash":
        harness = Harness(instance, build(source=texts), texts, make_resource(base_url, storage_dir, cls=_DyingResource))
        harness.materialize([harness.pipeline.batch_asset], partition)
        raise SystemExit("the provider accepted no batch: the process should have died")
    if mode == "blocking":
        resource = make_resource(base_url, storage_dir, poll_interval_seconds=0.05, max_poll_interval_seconds=0.05)
        harness = Harness(instance, build(source=texts, blocking=True), texts, resource)
        harness.materialize(harness.assets, partition, raise_on_error=False)
        return 0
    if mode == "pipeline":
        resource = make_resource(base_url, storage_dir, poll_interval_seconds=0.05, max_poll_interval_seconds=0.05)
        harness = Harness(instance, build(source=texts, blocking=True), texts, resource)
        return 0 if harness.materialize(harness.assets, partition, raise_on_error=False).success else 1
    if mode == "race":
        harness = Harness(instance, build(source=texts), texts, make_resource(base_url, storage_dir))
        print("ready", flush=True)
        sys.stdin.readline()
        return 0 if harness.materialize([harness.pipeline.batch_asset], partition, raise_on_error=False).success else 1
    raise SystemExit(f"unknown mode {mode!r}")


def _shared_texts(frame: Any) -> Any:
    """The day's texts without their day: every partition asks the same questions."""
    return frame.assign(text=frame["text"].str.replace(r", \d{4}-\d{2}-\d{2}\)$", ")", regex=True))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
