"""A submitting run in a process of its own, started on a signal: several race to submit one partition.

``python -m batch_pipelines_tests.reliability.child BASE_URL STORAGE_DIR PARTITION``, with
``DAGSTER_HOME`` set to the test's instance and the key in ``KEY_ENV``: loads the pipeline, prints
``ready``, waits for a line on stdin, then materializes ``classify_batch`` of ``PARTITION`` in one
run; exit status 0 when the run succeeded.
"""

import sys

import dagster as dg

from batch_pipelines_tests.dagster.harness import Harness, build, make_resource, make_texts
from batch_pipelines_tests.reliability.world import ROWS


def main(base_url: str, storage_dir: str, partition: str) -> int:
    instance = dg.DagsterInstance.get()
    texts = make_texts(ROWS)
    harness = Harness(instance, build(source=texts), texts, make_resource(base_url, storage_dir))
    print("ready", flush=True)
    sys.stdin.readline()
    return 0 if harness.materialize([harness.pipeline.batch_asset], partition, raise_on_error=False).success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
