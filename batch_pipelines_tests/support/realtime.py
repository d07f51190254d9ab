"""A real-time OpenAI-compatible model server of the test's own, on 127.0.0.1: what a user's vLLM,
Ollama or llama.cpp server is to the forwarding local provider.

It answers ``POST /v1/chat/completions`` only, with answers no responder of the package gives (a
``Label`` whose confidence is computed from the prompt's length, :func:`upstream_label`), and keeps
every request it received, so a test can tell its answers from any other.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batch_pipelines_tests.support.service import ServerThread

__all__ = ["RealtimeServer", "upstream_label"]


def upstream_label(prompt: str) -> dict[str, Any]:
    """The server's answer to a prompt: always ``Technology``, with a confidence from its length."""
    return {"category": "Technology", "confidence": round(0.5 + (len(prompt) % 37) / 100, 2)}


class RealtimeServer:
    """The model server, started when constructed; ``stop()`` it. Requires ``Bearer <api_key>``."""

    def __init__(self, *, api_key: str) -> None:
        self.api_key = api_key
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ServerThread(Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])]))

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    def stop(self) -> None:
        self._server.stop()

    async def _chat(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, status_code=401)
        body = orjson.loads(await request.body())
        with self._lock:
            self.received.append(body)
        prompt = body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": f"chatcmpl-upstream{len(self.received)}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": orjson.dumps(upstream_label(prompt)).decode()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        )
