"""The detached worker process: the worker loop of one data directory, outliving whoever started it.

    python -m batch_pipelines.local_service.worker DATA_DIR [--idle-exit SECONDS]

``supervision.py`` starts it for engines with ``worker="process"``; anyone may start it by hand.
It leaves at once when another process holds the directory's worker lock, and exits after
``--idle-exit`` seconds (env ``BATCH_PIPELINES_WORKER_IDLE``, default 60) with nothing to do.
Its output goes to ``worker.log`` in the data directory when supervision starts it.

This module is only the entry point; the package does not import it, so ``python -m`` runs it once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from batch_pipelines.local_service.store import Store
from batch_pipelines.local_service.worker_loop import Worker

__all__ = ["IDLE_ENV", "main"]

IDLE_ENV = "BATCH_PIPELINES_WORKER_IDLE"
_DEFAULT_IDLE_EXIT = 60.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batch_pipelines.local_service.worker", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=float(os.environ.get(IDLE_ENV, _DEFAULT_IDLE_EXIT)),
        help=f"exit after this many idle seconds (env {IDLE_ENV}, default {_DEFAULT_IDLE_EXIT:g})",
    )
    args = parser.parse_args(argv)
    store = Store(args.data_dir)
    try:
        Worker(store, idle_exit=args.idle_exit).run()
    finally:
        store.close()


if __name__ == "__main__":
    main()
