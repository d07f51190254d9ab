"""The forwarding responder: a batch answered row by row by a real-time OpenAI-compatible server.

Run a batch on your own model server (vLLM, llama.cpp, a gateway) through the Batch API. Requests
go out with bounded concurrency; a row the server cannot answer fails alone (502 for an unreachable
or non-JSON upstream, ``request_timeout`` for a timeout), never the batch. The API key is read from
an environment variable when the responder is built and never stored: the batch records only the
variable's name in the responder's ``spec``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

from batch_pipelines.local_service.errors import error_body
from batch_pipelines.local_service.responders import Reply
from batch_pipelines.profiles import env_var_problem

__all__ = ["DEFAULT_CONCURRENCY", "ForwardingResponder"]

#: Requests in flight at once upstream: what a small vLLM, Ollama or llama.cpp server takes in parallel.
DEFAULT_CONCURRENCY = 4


class ForwardingResponder:
    """Answers each request by calling a real-time OpenAI-compatible endpoint.

    ``base_url`` is the server's API root (``http://127.0.0.1:8000/v1``); the batch endpoint's path
    below ``/v1`` is appended. At most ``concurrency`` requests are in flight. ``model``, when set,
    replaces the body's model (run a batch on your own model). The API key is read from the
    environment variable named by ``api_key_env`` when the responder is built.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = 60.0,
        model: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if api_key_env is not None and (problem := env_var_problem(api_key_env, what="the forwarding api_key_env")):
            raise ValueError(problem)
        self.spec = {
            "kind": "forward",
            "base_url": base_url,
            "api_key_env": api_key_env,
            "concurrency": concurrency,
            "timeout": timeout,
            "model": model,
        }
        self._base_url = base_url.rstrip("/")
        self._model = model
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"environment variable {api_key_env} (the forwarding API key) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="forward")

    def __repr__(self) -> str:
        return f"ForwardingResponder(base_url={self._base_url!r}, concurrency={self.spec['concurrency']})"

    def respond(self, endpoint: str, bodies: Sequence[Mapping[str, Any]]) -> list[Reply]:
        url = self._base_url + endpoint.removeprefix("/v1")
        return list(self._pool.map(lambda body: self._send(url, body), bodies))

    def _send(self, url: str, body: Mapping[str, Any]) -> Reply:
        if self._model is not None:
            body = {**body, "model": self._model}
        try:
            response = self._client.post(url, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        except httpx.TimeoutException:
            return 0, {"code": "request_timeout", "message": "The upstream model server did not answer in time."}
        except httpx.HTTPError as exc:
            return 502, error_body(f"Upstream model server unreachable: {type(exc).__name__}", "server_error")
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return 502, error_body(f"Upstream answered {response.status_code} with a non-JSON body", "server_error")
        if not isinstance(payload, dict):
            return 502, error_body("Upstream answered with a non-object JSON body", "server_error")
        return response.status_code, payload

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
