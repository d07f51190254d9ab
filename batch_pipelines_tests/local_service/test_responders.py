"""The default responder: well-formed bodies per endpoint, schema-valid structured output."""

from __future__ import annotations

import json
from enum import Enum
from typing import Literal

import pytest
from openai.types import Completion, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel, Field

from batch_pipelines.local_service import DefaultResponder
from batch_pipelines_tests.support.request_files import CHAT


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


def test_responses_text_format_json_schema():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 3}}, "required": ["ok", "n"]}
    body = _respond("/v1/responses", {"model": "m", "input": "q", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}})
    value = json.loads(body["output"][0]["content"][0]["text"])
    assert isinstance(value["ok"], bool) and value["n"] >= 3


def test_gemini_generate_content_free_text_and_both_schema_forms():
    """A GenerateContentResponse as the google-genai SDK reads it; JSON fitting responseJsonSchema
    or Google's upper-case responseSchema when application/json is asked for."""
    from google.genai import types

    responder = DefaultResponder()
    contents = [{"role": "user", "parts": [{"text": "Label: great product"}]}]
    system = {"parts": [{"text": "You label reviews."}]}
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["good", "bad"]}}, "required": ["label"]}
    upper = {"type": "OBJECT", "properties": {"label": {"type": "STRING", "enum": ["good", "bad"]}}, "required": ["label"]}
    bodies = [
        {"model": "gemini-2.5-flash", "contents": contents, "systemInstruction": system},
        {"model": "gemini-2.5-flash", "contents": contents, "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}},
        {"model": "gemini-2.5-flash", "contents": contents, "generationConfig": {"responseMimeType": "application/json", "responseSchema": upper}},
    ]
    replies = responder.respond("generateContent", bodies)
    assert all(status == 200 for status, _ in replies)
    answers = [types.GenerateContentResponse.model_validate(body) for _, body in replies]
    assert answers[0].text.startswith("Local reply to: Label: great product")
    usage = answers[0].usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert json.loads(answers[1].text)["label"] in {"good", "bad"}
    assert json.loads(answers[2].text)["label"] in {"good", "bad"}
    assert answers[1].candidates[0].finish_reason.name == "STOP"
