"""Helpers for the local service tests: request lines, files, SDK clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson

from batch_pipelines.local_service import BatchEngine

CHAT = "/v1/chat/completions"


def chat_line(i: int, *, model: str = "kimi-k2.5", prefix: str = "text", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"{prefix}_{i}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": f"Classify text {i}"}], **body},
    }


def write_lines(path: Path, lines: list[Any]) -> Path:
    """One line per item: dicts are JSON-encoded, bytes are written as they are."""
    with path.open("wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n")
    return path


def sdk(svc: Any, **options: Any) -> openai.OpenAI:
    """The official SDK pointed at a local service; no retries unless asked (tests see every answer)."""
    options.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=svc.api_key or "unused", base_url=svc.base_url, **options)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f]


def submit(
    engine: BatchEngine, tmp_path: Path, lines: list[Any], *, metadata: dict[str, str] | None = None, window: str = "24h"
) -> dict[str, Any]:
    """Upload ``lines`` and create a chat batch through the engine (HTTP is tested elsewhere)."""
    uploaded = engine.create_file("requests.jsonl", "batch", write_lines(tmp_path / "requests.jsonl", lines))
    return engine.create_batch(uploaded["id"], CHAT, window, metadata)


def file_lines(engine: BatchEngine, file_id: str | None) -> list[dict[str, Any]]:
    """The parsed lines of a stored file; [] for a null file id."""
    return read_jsonl(engine.file_content_path(file_id)) if file_id else []
