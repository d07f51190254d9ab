"""The HTTP transport of OpenAI-style providers: one httpx.Client, patient retries, a guarded key.

Connection errors are retried, and error answers as :mod:`batch_pipelines.providers.retry_policy`
says (408, 409, 429 and 5xx, not a 429 that means "out of money", with its waits); 400, 401, 403
and 404 are raised at once. A call that may have taken effect although its answer was lost is
looked up (``recover``) before it is sent again.

The API key lives in a :class:`pydantic.SecretStr` and is only unwrapped inside :class:`_KeyAuth`
while a request is being sent. httpx masks the Authorization header in ``repr(headers)`` and
neither httpx nor httpcore logs request headers, so DEBUG logging stays clean; provider error
messages are scrubbed of the key before they become exceptions, in case a service echoes it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import replace
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import SecretStr

from batch_pipelines.providers.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    ProviderError,
    status_error_class,
)
from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.retry_policy import RetryPolicy

__all__ = ["DEFAULT_TIMEOUT", "HttpTransport", "RetryPolicy", "profile_transport", "resolve_api_key", "write_atomically"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Long reads are allowed (a large upload is validated before the answer comes); connecting is not.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)

_REQUEST_ID_HEADERS = ("x-request-id", "request-id")

_REDACTED = "[redacted]"


def resolve_api_key(api_key: str | SecretStr | None, env_var: str | None, provider: str) -> SecretStr:
    """The key passed in, else the one in ``env_var``; a clear error (without any key) when neither."""
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if not api_key and env_var:
        api_key = os.environ.get(env_var)
    if not api_key:
        where = f"pass api_key= or set the {env_var} environment variable" if env_var else "pass api_key="
        raise ProviderError(f"no API key for provider {provider!r}: {where}")
    return SecretStr(api_key)


def write_atomically(dest: Path, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``dest`` through a temporary file beside it: ``dest`` is whole or absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with part.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


class _KeyAuth(httpx.Auth):
    """Adds the key at send time, so the client's default headers never hold it: as a bearer
    token in ``Authorization``, or bare in another header (Anthropic's ``x-api-key``)."""

    def __init__(self, api_key: SecretStr, header: str) -> None:
        self._api_key = api_key
        self._header = header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._api_key.get_secret_value()
        request.headers[self._header] = f"Bearer {key}" if self._header.lower() == "authorization" else key
        yield request


class HttpTransport:
    """JSON calls and file transfers against one base URL, with retries and typed errors."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        key_header: str = "Authorization",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self._client = httpx.Client(
            base_url=base_url,
            auth=_KeyAuth(api_key, key_header),
            timeout=timeout,
            headers={"User-Agent": "batch-pipelines", "Accept": "application/json", **(headers or {})},
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def __repr__(self) -> str:
        return f"HttpTransport(base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        recover: Callable[[], dict[str, Any] | None] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send a call and return its JSON object. ``kwargs`` go to httpx (params, json, files, data).

        ``recover`` is consulted before retrying a call that may have taken effect although its
        answer was lost (a timeout or a 5xx after sending); what it returns is used as the answer.
        """
        return self._send(method, path, self._read_json, recover=recover, **kwargs)

    def exchange(self, method: str, path: str, read: Callable[[httpx.Response], _T], **kwargs: Any) -> _T:
        """Send a call with the same retries and errors, and let ``read`` take what it needs of the
        successful answer (its headers, say: Gemini's resumable upload answers in them)."""
        return self._send(method, path, read, **kwargs)

    def download(self, path: str, dest: Path) -> Path:
        """Stream a response body to ``dest`` chunk by chunk; ``dest`` appears whole or not at all."""

        def write(response: httpx.Response) -> Path:
            return write_atomically(dest, response.iter_bytes())

        return self._send("GET", path, write)

    # ---- the retry loop --------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], _T],
        *,
        recover: Callable[[], _T | None] | None = None,
        **kwargs: Any,
    ) -> _T:
        retries_taken = 0
        while True:
            headers: httpx.Headers | None = None
            try:
                # Streamed so that downloads never buffer; JSON answers are small and read whole.
                with self._client.stream(method, path, **kwargs) as response:
                    if response.is_success:
                        return read(response)
                    response.read()
                    error: APIError = self._status_error(response)
                    headers = response.headers
                    retry = self.retry.retryable_status(response.status_code, error.code or error.type, headers)
                    may_have_acted = response.status_code != 429
            except httpx.TransportError as exc:
                error = self._transport_error(exc, method, path)
                retry = True
                may_have_acted = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))

            if not retry or retries_taken >= self.retry.max_retries:
                raise error from error.__cause__
            delay = self.retry.delay(retries_taken, headers)
            retries_taken += 1
            _log.info(
                "Retrying %s %s in %.2f s (retry %d of %d) after: %s",
                method, path, delay, retries_taken, self.retry.max_retries, error,
            )
            time.sleep(delay)
            if recover is not None and may_have_acted:
                recovered = recover()
                if recovered is not None:
                    _log.info("%s %s had taken effect before its answer was lost; not sending it again", method, path)
                    return recovered

    # ---- answers and errors ----------------------------------------------------------------
    def _read_json(self, response: httpx.Response) -> dict[str, Any]:
        content = response.read()
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise APIResponseValidationError(
                f"expected a JSON object, got {self._redact(content[:200].decode(errors='replace'))!r}",
                **self._where(response),
            )
        return payload

    def _status_error(self, response: httpx.Response) -> APIError:
        text = self._redact(response.text)
        try:
            payload = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            payload = None
        body = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = code = type_ = param = None
        if isinstance(body, dict):
            message = body.get("message") or body.get("detail")
            code, type_, param = body.get("code"), body.get("type"), body.get("param")
        elif isinstance(body, str):
            message = body
        if not message:
            message = text[:500] or response.reason_phrase
        return status_error_class(response.status_code)(
            str(message),
            status_code=response.status_code,
            code=None if code is None else str(code),
            type=None if type_ is None else str(type_),
            param=None if param is None else str(param),
            body=body,
            **self._where(response),
        )

    def _transport_error(self, exc: httpx.TransportError, method: str, path: str) -> APIError:
        url = str(self._client.base_url.join(path))
        cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        reason = self._redact(str(exc)) or type(exc).__name__
        error = cls(f"{type(exc).__name__}: {reason}", method=method, url=url)
        error.__cause__ = exc
        return error

    def _where(self, response: httpx.Response) -> dict[str, Any]:
        request_id = next((response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None)
        return {"method": response.request.method, "url": str(response.request.url), "request_id": request_id}

    def _redact(self, text: str) -> str:
        secret = self._api_key.get_secret_value()
        return text.replace(secret, _REDACTED) if secret in text else text


def profile_transport(
    profile: ProviderProfile,
    *,
    api_key: str | SecretStr | None,
    base_url: str | None,
    max_retries: int | None,
    retry: RetryPolicy | None,
    timeout: float | httpx.Timeout,
    **options: Any,
) -> HttpTransport:
    """The transport a provider client of ``profile`` talks through: its base URL (or ``base_url``),
    its key (or the profile's environment variable), the retry policy (``max_retries`` overriding
    it); ``options`` go to :class:`HttpTransport` (key header, extra headers)."""
    url = base_url or profile.base_url
    if not url:
        raise ProviderError(f"provider {profile.name!r} has no base URL: pass base_url=")
    retry = retry or RetryPolicy()
    if max_retries is not None:
        retry = replace(retry, max_retries=max_retries)
    key = resolve_api_key(api_key, profile.api_key_env, profile.name)
    return HttpTransport(url, key, timeout=timeout, retry=retry, **options)

