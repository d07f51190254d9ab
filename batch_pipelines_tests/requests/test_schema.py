"""Structured output: strict JSON schemas, models they cannot express, the body parameters asking for them,
and files the local service accepts over HTTP."""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, Optional

import orjson
import pandas as pd
import pytest
from pydantic import BaseModel, Field, ValidationError

from batch_pipelines.profiles import custom_profile
from batch_pipelines.providers.openai_compatible import OpenAICompatibleProvider
from batch_pipelines.requests import RequestSpec, build_request_files, strict_json_schema
from batch_pipelines_tests.support.frames import OPENAI, chat_spec, request_lines
from batch_pipelines_tests.support.request_files import CHAT
from batch_pipelines_tests.support.waiting import wait_for_batch


class Sentiment(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Evidence(BaseModel):
    quote: str
    weight: float = 1.0


class Verdict(BaseModel):
    label: Sentiment = Field(description="the overall sentiment")
    confidence: float
    note: Optional[str] = None
    evidence: list[Evidence]
    best: Evidence = Field(description="the strongest piece")


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


def test_strict_schema_closes_every_object_and_requires_every_field():
    schema = strict_json_schema(Verdict)
    objects = _objects(schema)
    assert len(objects) >= 2
    for node in objects:
        assert node["additionalProperties"] is False and node["required"] == list(node["properties"])
    assert schema["required"] == ["label", "confidence", "note", "evidence", "best"]
    assert "default" not in schema["properties"]["note"]
    best = schema["properties"]["best"]  # a $ref with a description: inlined
    assert "$ref" not in best and best["description"] == "the strongest piece" and best["additionalProperties"] is False


def test_models_strict_output_cannot_express_are_refused():
    class Loose(BaseModel):
        counts: dict[str, int]

    class Opaque(BaseModel):
        fn: Callable[[int], int]

    with pytest.raises(ValueError, match="free-form mapping"):
        strict_json_schema(Loose)
    with pytest.raises(ValueError, match="cannot become a JSON schema"):
        strict_json_schema(Opaque)
    with pytest.raises(ValidationError, match="free-form mapping"):
        chat_spec(output_model=Loose)
    with pytest.raises(ValidationError, match="output_model needs"):
        RequestSpec(model="m", endpoint="/v1/embeddings", input_template="{x}", output_model=Verdict)


def test_output_model_sets_response_format_or_text_format(tmp_path):
    df = pd.DataFrame({"text": ["good"]})
    chat = request_lines(build_request_files(df, chat_spec(output_model=Verdict), tmp_path / "c", profile=OPENAI))[0]
    assert chat["body"]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "strict": True, "schema": strict_json_schema(Verdict)},
    }
    spec = RequestSpec(model="m", endpoint="/v1/responses", input_template="{text}", body={"text": {"verbosity": "low"}}, output_model=Verdict)
    responses = request_lines(build_request_files(df, spec, tmp_path / "r", profile=OPENAI))[0]
    assert responses["body"]["text"]["verbosity"] == "low"
    assert responses["body"]["text"]["format"]["name"] == "Verdict" and responses["body"]["text"]["format"]["strict"] is True


def test_local_service_accepts_structured_output_files(local_service, tmp_path):
    svc = local_service(profile="openai")
    df = pd.DataFrame({"text": [f"review {i}: \"great\"\nproduct" for i in range(30)]}, index=[f"rev {i}" for i in range(30)])
    profile = custom_profile(svc.base_url, name="openai", max_requests_per_file=12)
    manifest = build_request_files(df, chat_spec(output_model=Verdict), tmp_path / "req", profile=profile)
    assert len(manifest.shards) == 3
    ids = manifest.read_ids().set_index("custom_id")
    with OpenAICompatibleProvider("openai", api_key=svc.api_key, base_url=svc.base_url, max_retries=0) as provider:
        verdicts = {}
        for shard in manifest.shards:
            batch = provider.submit(shard.path, endpoint=CHAT, metadata={"fingerprint": shard.fingerprint("openai", CHAT)[:64]})
            done = wait_for_batch(svc.engine, batch.id)
            assert done["status"] == "completed" and done["request_counts"] == {"total": shard.rows, "completed": shard.rows, "failed": 0}
            files = provider.download_results(provider.retrieve_batch(batch.id), tmp_path / "out")
            assert files.error_path is None
            for line in files.output_path.read_bytes().splitlines():
                result = orjson.loads(line)
                content = result["response"]["body"]["choices"][0]["message"]["content"]
                verdicts[ids.loc[result["custom_id"], "key"]] = Verdict.model_validate_json(content)
    assert sorted(verdicts) == sorted(df.index)
