"""Child processes of the Dagster tests: runs that die, or are interrupted, half way.

``python -m batch_pipelines_tests.dagster.child MODE BASE_URL STORAGE_DIR PARTITION`` with
``DAGSTER_HOME`` set to the test's instance and the API key in ``KEY_ENV``:

- ``crash``: materializes ``classify_batch``; the process exits (``os._exit``, no clean-up, no
  event written) the moment the provider has accepted the first batch, before Dagster records it.
- ``blocking``: materializes the whole blocking pipeline and waits inside the run; the test
  interrupts it with SIGINT (what terminating a run does to its worker).
"""

import faulthandler
import os
import signal
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from batch_pipelines.providers import Batch, BatchProvider, OpenAICompatibleProvider
from batch_pipelines.resources import BatchProviderResource
from batch_pipelines_tests.dagster.harness import Harness, build, make_resource, make_texts

CRASH_EXIT = 17


class _DiesAfterSubmit(OpenAICompatibleProvider):
    """The real HTTP client, except that the process dies right after a batch is accepted."""

    def submit(self, path: Path, **options: Any) -> Batch:
        super().submit(path, **options)
        os._exit(CRASH_EXIT)


class _DyingResource(BatchProviderResource):
    def get_provider(self) -> BatchProvider:
        return _DiesAfterSubmit(self.profile, api_key=self.api_key, base_url=self.base_url)


def main(mode: str, base_url: str, storage_dir: str, partition: str) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a test that waits too long asks where it is
    instance = dg.DagsterInstance.get()
    texts = make_texts(int(os.environ.get("CHILD_ROWS", "8")))
    if mode == "crash":
        harness = Harness(instance, build(source=texts), texts, make_resource(base_url, storage_dir, cls=_DyingResource))
        harness.materialize([harness.pipeline.batch_asset], partition)
        raise SystemExit("the provider accepted no batch: the process should have died")
    if mode == "blocking":
        resource = make_resource(base_url, storage_dir, poll_interval_seconds=0.05, max_poll_interval_seconds=0.05)
        harness = Harness(instance, build(source=texts, blocking=True), texts, resource)
        harness.materialize(harness.assets, partition, raise_on_error=False)
        return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
