"""Result files for the results tests: lines written by hand as providers write them, and batches
run through the local service with the official SDK, their files downloaded.

Every join through these helpers asserts that the outcome counts add up to the number of source rows.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines.profiles import ProviderProfile, get_profile
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RequestManifest, RequestSpec, build_request_files, custom_ids
from batch_pipelines.results import OUTCOMES, JoinedResults, join_results, manifest_custom_ids
from batch_pipelines_tests.support.clients import sdk
from batch_pipelines_tests.support.request_files import CHAT, write_lines
from batch_pipelines_tests.support.waiting import TERMINAL, wait_until

__all__ = [
    "MOONSHOT",
    "OPENAI",
    "Mood",
    "Run",
    "Verdict",
    "answer",
    "chat_spec",
    "count",
    "http_error",
    "join",
    "joined",
    "no_answer",
    "ok",
    "outcomes",
    "source",
    "texts",
]

OPENAI = get_profile("openai")
MOONSHOT = get_profile("moonshot")


# ---- lines as providers write them ------------------------------------------------------------


def ok(cid: str, content: Any = "fine", *, prompt: int = 10, completion: int = 5, cached: int | None = None, finish: str = "stop") -> dict[str, Any]:
    """A chat completion that succeeded, with usage."""
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": usage,
    }
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}


def answer(cid: str, body: dict[str, Any]) -> dict[str, Any]:
    """A succeeded line around any endpoint's ``body``."""
    return {"id": "x", "custom_id": cid, "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}


def http_error(cid: str, status: int, code: str | None = None, message: str = "no", type_: str = "invalid_request_error") -> dict[str, Any]:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": status, "request_id": "r", "body": body}, "error": None}


def no_answer(cid: str, code: str, message: str = "not run") -> dict[str, Any]:
    """A failure without an HTTP answer (batch_expired, request_timeout...)."""
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": None, "error": {"code": code, "message": message}}


def source(n: int) -> tuple[pd.DataFrame, pd.Series]:
    """A source of ``n`` rows keyed r0, r1... and its custom_ids."""
    df = pd.DataFrame({"key": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})
    return df, custom_ids(df["key"])


def join(tmp_path: Path, df: pd.DataFrame, ids: pd.Series, output: list[Any] | None, errors: list[Any] | None = None, **kw: Any) -> JoinedResults:
    """Join hand-written output and error lines (None: no such file) of one batch, ``batch_1``."""
    files = ResultFiles(
        batch_id="batch_1",
        output_path=write_lines(tmp_path / "out.jsonl", output) if output is not None else None,
        error_path=write_lines(tmp_path / "err.jsonl", errors) if errors is not None else None,
    )
    kw.setdefault("endpoint", CHAT)
    result = join_results(df, ids, [files], **kw)
    assert result.summary.rows == len(df) == sum(getattr(result.summary, o) for o in OUTCOMES)
    assert result.frame["outcome"].value_counts().sum() == len(df)
    return result


def outcomes(frame: pd.DataFrame) -> dict[str, str]:
    """custom_id -> outcome."""
    return dict(zip(frame["custom_id"], frame["outcome"].astype(str)))


def count(frame: pd.DataFrame, outcome: str) -> int:
    return int((frame["outcome"] == outcome).sum())


class Mood(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Verdict(BaseModel):
    """A user's output model with an enum, a bounded number, a list and a literal."""

    mood: Mood
    score: float = Field(ge=0, le=1)
    tags: list[str]
    label: Literal["keep", "drop"]


# ---- batches run through the local service ----------------------------------------------------


def texts(n: int) -> pd.DataFrame:
    return pd.DataFrame({"doc": [f"doc-{i:03d}" for i in range(n)], "text": [f"Review number {i}: it was fine." for i in range(n)]})


def chat_spec(**kw: Any) -> RequestSpec:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", [{"role": "system", "content": "Classify the review."}, {"role": "user", "content": "{text}"}])
    return RequestSpec(key_column="doc", **kw)


class Run:
    """One submission of a table: its manifest, the batches as finished and their result files."""

    def __init__(self, svc: Any, tmp_path: Path, name: str) -> None:
        self.client = sdk(svc)
        self.dir = tmp_path / name
        self.batches: list[Any] = []
        self.files: list[ResultFiles] = []
        self.manifest: RequestManifest | None = None

    def submit(
        self,
        df: pd.DataFrame,
        spec: RequestSpec,
        *,
        faults: FaultPlan | None = None,
        profile: ProviderProfile = OPENAI,
        while_running: Callable[[Any], None] | None = None,
        **build: Any,
    ) -> Run:
        self.manifest = build_request_files(df, spec, self.dir / "requests", profile=profile, **build)
        metadata = {FAULTS_METADATA_KEY: faults.to_json()} if faults is not None else None
        for shard in self.manifest.shards:
            uploaded = self.client.files.create(file=shard.path, purpose="batch")
            batch = self.client.batches.create(input_file_id=uploaded.id, endpoint=spec.endpoint, completion_window="24h", metadata=metadata)
            if while_running is not None:
                while_running(batch)
            self.finish(batch.id)
        return self

    def finish(self, batch_id: str) -> None:
        """Wait for the batch to end, then keep it and download its files."""
        batch = self.wait(batch_id)
        self.batches.append(batch)
        self.files.append(self.download(batch))

    def wait(self, batch_id: str, statuses: tuple[str, ...] = TERMINAL, until: Callable[[Any], bool] = lambda b: True) -> Any:
        """The batch once it is in one of ``statuses`` and ``until`` holds for it."""

        def reached() -> Any:
            batch = self.client.batches.retrieve(batch_id)
            return batch if batch.status in statuses and until(batch) else None

        return wait_until(reached)

    def download(self, batch: Any) -> ResultFiles:
        paths = {}
        for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if file_id is not None:
                paths[kind] = self.dir / f"{batch.id}.{kind}.jsonl"
                self.client.files.content(file_id).write_to_file(paths[kind])
        return ResultFiles(batch_id=batch.id, output_path=paths.get("output"), error_path=paths.get("error"))

    def join(self, df: pd.DataFrame, spec: RequestSpec, **kw: Any) -> JoinedResults:
        assert self.manifest is not None
        kw.setdefault("rejected", self.manifest.rejected)
        kw.setdefault("attempt", self.manifest.attempt)
        return joined(df, manifest_custom_ids(self.manifest, df.index), spec, self.files, **kw)


def joined(df: pd.DataFrame, ids: pd.Series, spec: RequestSpec, files: list[ResultFiles], **kw: Any) -> JoinedResults:
    """Join downloaded files and check every row is accounted for exactly once, in source order."""
    assert ids.dropna().equals(custom_ids(df[spec.key_column]).loc[ids.dropna().index])  # the manifest's ids are the keys'
    result = join_results(df, ids, files, endpoint=spec.endpoint, **kw)
    counts = result.frame["outcome"].value_counts()
    assert int(counts.sum()) == len(df) == result.summary.rows
    assert sum(getattr(result.summary, o) for o in OUTCOMES) == len(df)
    assert result.frame["custom_id"].is_unique and list(result.frame["doc"]) == list(df["doc"])
    return result
