"""Driving a :class:`BatchEngine` directly, below HTTP: submit a request file, watch a batch, read a stored file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batch_pipelines.local_service import BatchEngine
from batch_pipelines_tests.support.request_files import CHAT, read_jsonl, write_lines
from batch_pipelines_tests.support.waiting import TERMINAL, wait_until

__all__ = ["file_lines", "submit", "watch_batch"]


def submit(
    engine: BatchEngine, tmp_path: Path, lines: list[Any], *, metadata: dict[str, str] | None = None, window: str = "24h"
) -> dict[str, Any]:
    """Upload ``lines`` and create a chat batch through the engine (HTTP is tested elsewhere)."""
    uploaded = engine.create_file("requests.jsonl", "batch", write_lines(tmp_path / "requests.jsonl", lines))
    return engine.create_batch(uploaded["id"], CHAT, window, metadata)


def file_lines(engine: BatchEngine, file_id: str | None) -> list[dict[str, Any]]:
    """The parsed lines of a stored file; [] for a null file id."""
    return read_jsonl(engine.file_content_path(file_id)) if file_id else []


def watch_batch(engine: BatchEngine, batch_id: str, *, interval: float = 0.01) -> tuple[list[str], list[int], dict[str, Any]]:
    """Poll a batch until it is terminal: the statuses seen (in order, each once), the completed
    count at every poll, and the final batch."""
    statuses: list[str] = []
    counts: list[int] = []

    def terminal() -> dict[str, Any] | None:
        batch = engine.get_batch(batch_id)
        if not statuses or statuses[-1] != batch["status"]:
            statuses.append(batch["status"])
        counts.append(batch["request_counts"]["completed"])
        return batch if batch["status"] in TERMINAL else None

    final = wait_until(terminal, interval=interval)
    return statuses, counts, final
