"""Frames, specs and readers for the tests of the requests layer (:mod:`batch_pipelines.requests`)."""

from __future__ import annotations

from typing import Any

import orjson
import pandas as pd
import pytest

import batch_pipelines.requests.build as build_module
from batch_pipelines.profiles import get_profile
from batch_pipelines.requests import RequestManifest, RequestSpec, RequestValidationError

__all__ = ["MOONSHOT", "NASTY", "OPENAI", "chat_spec", "codes", "fixed_rows", "request_lines", "small_chunks", "user_text"]

OPENAI = get_profile("openai")
MOONSHOT = get_profile("moonshot")
#: Text that breaks a line or its JSON when escaped wrongly: quotes, backslashes, control
#: characters, line separators, non-ASCII, nothing at all, and braces.
NASTY = ['say "hi"', "back\\slash", "new\nline\r\n", "tab\tbell\x07nul\x00esc\x1b", "\u2028\u2029 seps", "東京 😀", "", "}{ {{x}}"]


def chat_spec(**kw: Any) -> RequestSpec:
    """A chat-completions spec with a system message and ``Text: {text}``; ``kw`` overrides."""
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", [{"role": "system", "content": "Classify."}, {"role": "user", "content": "Text: {text}"}])
    return RequestSpec(**kw)


def fixed_rows(n: int) -> pd.DataFrame:
    """``n`` rows whose request lines all have the same size, keyed ``id0000``...."""
    return pd.DataFrame({"text": [f"row {i:04d}" for i in range(n)]}, index=[f"id{i:04d}" for i in range(n)])


def request_lines(manifest: RequestManifest) -> list[dict[str, Any]]:
    """Every request line a build wrote, shard after shard."""
    return [orjson.loads(line) for shard in manifest.shards for line in shard.path.read_bytes().splitlines()]


def user_text(line: dict[str, Any]) -> Any:
    """The content of a chat request's last message."""
    return line["body"]["messages"][-1]["content"]


def codes(exc: pytest.ExceptionInfo[RequestValidationError]) -> dict[str, int]:
    return exc.value.counts


def small_chunks(monkeypatch: pytest.MonkeyPatch, *, first_rows: int = 3, chunk_bytes: int = 500) -> None:
    """Rows become lines a few at a time, so the test crosses many chunk boundaries."""
    monkeypatch.setattr(build_module, "_FIRST_CHUNK_ROWS", first_rows)
    monkeypatch.setattr(build_module, "_CHUNK_BYTES", chunk_bytes)
