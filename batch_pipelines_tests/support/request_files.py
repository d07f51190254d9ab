"""Request and result files written by hand, for tests below the requests layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

__all__ = ["CHAT", "MODELS", "chat_line", "custom_ids", "read_jsonl", "write_lines", "write_requests"]

CHAT = "/v1/chat/completions"
#: A model each profile's validation accepts.
MODELS = {"moonshot": "kimi-k2.5", "openai": "gpt-4o-mini"}


def chat_line(i: int, *, model: str = "kimi-k2.5", prefix: str = "text", sep: str = "_", **body: Any) -> dict[str, Any]:
    """One chat-completions request line, custom_id ``{prefix}{sep}{i}``."""
    return {
        "custom_id": f"{prefix}{sep}{i}",
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


def write_requests(path: Path, n: int, *, model: str = "gpt-4o-mini", prefix: str = "row") -> Path:
    """A chat-completions request file of ``n`` lines, custom ids ``{prefix}-0`` ...."""
    return write_lines(path, [chat_line(i, model=model, prefix=prefix, sep="-") for i in range(n)])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f]


def custom_ids(path: Path) -> list[str]:
    return [line["custom_id"] for line in read_jsonl(path)]
