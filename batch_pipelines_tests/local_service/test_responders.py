"""Responders: well-formed bodies per endpoint, schema-valid structured output, forwarding."""

from __future__ import annotations

import json
from enum import Enum
from typing import Literal

import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel, Field

from batch_pipelines.local_service import DefaultResponder, ForwardingResponder, create_realtime_app, schema_instance
from batch_pipelines_tests.conftest import ServerThread, wait_for_batch
from batch_pipelines_tests.local_service.support import CHAT, chat_line, file_lines, submit


class Sentiment(str, Enum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Entity(BaseModel):
    name: str
    kind: Literal["person", "place", "thing"]
    score: float = Field(ge=0.5, le=1)


class Review(BaseModel):
    sentiment: Sentiment
    stars: int = Field(ge=1, le=5)
    tags: list[str] = Field(min_length=2)
    summary: str | None
    entities: list[Entity]
    nested: dict[str, Entity] | None = None
    flag: bool


def _respond(endpoint, body):
    [(status, payload)] = DefaultResponder().respond(endpoint, [body])
    assert status == 200
    return payload


def test_chat_completion_body():
    body = _respond(CHAT, {"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi there"}]})
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content and parsed.usage.total_tokens == parsed.usage.prompt_tokens + parsed.usage.completion_tokens
    assert body == _respond(CHAT, {"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi there"}]}) | {"id": body["id"], "created": body["created"]}


def test_responses_embeddings_completions_moderations_bodies():
    Response.model_validate(_respond("/v1/responses", {"model": "m", "input": "hello"}))
    Response.model_validate(_respond("/v1/responses", {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}]}))
    emb = CreateEmbeddingResponse.model_validate(_respond("/v1/embeddings", {"model": "m", "input": ["a", "b"]}))
    assert [len(d.embedding) for d in emb.data] == [16, 16] and emb.data[0].embedding != emb.data[1].embedding
    again = _respond("/v1/embeddings", {"model": "m", "input": "a"})
    assert again["data"][0]["embedding"] == emb.data[0].embedding  # deterministic
    assert abs(sum(v * v for v in again["data"][0]["embedding"]) - 1) < 1e-5
    assert len(_respond("/v1/embeddings", {"model": "m", "input": "a", "dimensions": 8})["data"][0]["embedding"]) == 8
    Completion.model_validate(_respond("/v1/completions", {"model": "m", "prompt": "Once"}))
    mod = ModerationCreateResponse.model_validate(_respond("/v1/moderations", {"input": ["a", "b"]}))
    assert len(mod.results) == 2 and not mod.results[0].flagged


@pytest.mark.parametrize("prompt", ["first review", "second review", "third one", "x"])
def test_json_schema_content_validates(prompt):
    schema = Review.model_json_schema()  # $defs, $ref, anyOf with null, enums, bounds
    body = _respond(
        CHAT,
        {
            "model": "m",
            "messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}},
        },
    )
    review = Review.model_validate_json(body["choices"][0]["message"]["content"])
    assert review.tags and review.stars >= 1


def test_enum_choice_depends_on_the_prompt_deterministically():
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b", "c", "d"]}}, "required": ["label"]}
    picks = {schema_instance(schema, pick=i)["label"] for i in range(8)}
    assert picks == {"a", "b", "c", "d"}
    assert schema_instance(schema, pick=5) == schema_instance(schema, pick=5)


def test_bounded_numbers_spread_over_their_range():
    schema = {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "open": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        },
        "required": ["confidence", "stars", "open"],
    }
    answers = [schema_instance(schema, pick=pick) for pick in range(200)]
    assert all(0 <= a["confidence"] <= 1 and 1 <= a["stars"] <= 5 and 0 < a["open"] < 1 for a in answers)
    assert len({a["confidence"] for a in answers}) > 50 and {a["stars"] for a in answers} == {1, 2, 3, 4, 5}


def test_responses_text_format_json_schema():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 3}}, "required": ["ok", "n"]}
    body = _respond("/v1/responses", {"model": "m", "input": "q", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}})
    value = json.loads(body["output"][0]["content"][0]["text"])
    assert isinstance(value["ok"], bool) and value["n"] >= 3


def test_forwarding_responder_runs_a_batch_on_a_realtime_server(local_service, tmp_path, monkeypatch):
    upstream = ServerThread(create_realtime_app(api_key="sk-upstream"))
    try:
        monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream")
        forward = ForwardingResponder(f"{upstream.url}/v1", api_key_env="UPSTREAM_KEY", concurrency=3, model="my-model")
        assert "sk-upstream" not in repr(forward) and "sk-upstream" not in json.dumps(forward.spec)
        forward.close()
        svc = local_service(responder=forward)
        batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(i) for i in range(12)])["id"])
        assert batch["status"] == "completed", batch
        output = file_lines(svc.engine, batch["output_file_id"])
        assert len(output) == 12 and {x["response"]["body"]["model"] for x in output} == {"my-model"}
        assert all("Classify text" in x["response"]["body"]["choices"][0]["message"]["content"] for x in output)
        assert "sk-upstream" not in (svc.data_dir / "state.sqlite3").read_bytes().decode("latin-1")

        # A wrong key upstream: every row fails with the upstream's 401, in the error file.
        monkeypatch.setenv("UPSTREAM_KEY", "sk-wrong")
        svc2 = local_service(responder=ForwardingResponder(f"{upstream.url}/v1", api_key_env="UPSTREAM_KEY"))
        failed = wait_for_batch(svc2.engine, submit(svc2.engine, tmp_path, [chat_line(0)])["id"])
        [error] = file_lines(svc2.engine, failed["error_file_id"])
        assert failed["output_file_id"] is None and error["response"]["status_code"] == 401
        client = openai.OpenAI(api_key="sk-upstream", base_url=f"{upstream.url}/v1", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content.endswith("hello")
    finally:
        upstream.stop()


def test_forwarding_to_nowhere_fails_rows_not_the_batch(local_service, tmp_path):
    svc = local_service(responder=ForwardingResponder("http://127.0.0.1:9/v1", timeout=2))
    batch = wait_for_batch(svc.engine, submit(svc.engine, tmp_path, [chat_line(0), chat_line(1)])["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 2
    assert {e["response"]["status_code"] for e in file_lines(svc.engine, batch["error_file_id"])} == {502}
