"""The guard in front of every route: the bearer-key check, then the injected HTTP faults.

Every route wants ``Authorization: Bearer <api_key>`` (OpenAI's 401 body otherwise, never
echoing the key sent) unless the app was built with ``api_key=None``. Then the live fault plan's
``http_faults`` (:class:`HttpFaults`) apply to every route except ``/v1/_local/*``: each matching
rule delays the call, answers it with an injected status (with ``Retry-After`` when asked), or
drops the connection; with ``after`` the call is served first and only its answer misbehaves.
A dropped connection shows in uvicorn's log as "ASGI callable returned without completing
response": the server's own account of the cut.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.faults import FaultPlan, HttpFault
from batch_pipelines.local_service.json_responses import error_response

if TYPE_CHECKING:
    from batch_pipelines.local_service.engine import BatchEngine

__all__ = ["ADMIN_PREFIX", "Guard", "HttpFaults"]

#: Routes of the local extensions (the fault plan itself): never faulted.
ADMIN_PREFIX = "/v1/_local/"


class HttpFaults:
    """The live HTTP fault plan of an app, with its "first N calls" counters."""

    def __init__(self, plan: FaultPlan, engine: BatchEngine | None = None) -> None:
        self._lock = threading.Lock()
        self._engine = engine
        self.plan = plan
        self._counts = [0] * len(plan.http_faults)

    def set(self, plan: FaultPlan) -> None:
        """Replace the plan (HTTP faults now, row faults for batches created from now on)."""
        with self._lock:
            self.plan = plan
            self._counts = [0] * len(plan.http_faults)
        if self._engine is not None:
            self._engine.faults = plan

    def firing(self, method: str, path: str) -> list[HttpFault]:
        """The rules that apply to this call, counting it against each."""
        fired = []
        with self._lock:
            for i, rule in enumerate(self.plan.http_faults):
                if rule.method is not None and rule.method.upper() != method:
                    continue
                if not fnmatch.fnmatchcase(path, rule.route):
                    continue
                if rule.times is not None and self._counts[i] >= rule.times:
                    continue
                self._counts[i] += 1
                fired.append(rule)
        return fired


class Guard:
    """Bearer-key check, then injected HTTP faults, in front of every route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        faults: HttpFaults | None,
        error_response: Callable[[ServiceError], Response] = error_response,
        accept_x_api_key: bool = False,
        key_header: str | None = None,
        keyless: Callable[[Scope], bool] | None = None,
    ) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode() if api_key is not None else None
        # Anthropic's docs send the key as ``x-api-key``, its current SDKs as a bearer token: both
        # count. Gemini's clients send it bare in ``x-goog-api-key`` (``key_header``).
        self._key_header = (key_header or "x-api-key").lower().encode()
        self._expected_x_api_key = api_key.encode() if api_key is not None and (accept_x_api_key or key_header) else None
        self._faults = faults
        self._error_response = error_response
        # Calls that carry their own credential instead of the key (Gemini's upload sessions:
        # the SDK sends the chunks to the session URL without the key, the session id is it).
        self._keyless = keyless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._expected is not None and not (self._keyless is not None and self._keyless(scope)):
            headers = dict(scope["headers"])
            given, x_api_key = headers.get(b"authorization"), headers.get(self._key_header)
            if self._expected_x_api_key is None:
                x_api_key = None
            if given is None and x_api_key is None:
                await self._error_response(_missing_key()).__call__(scope, receive, send)
                return
            if not (
                (given is not None and hmac.compare_digest(given, self._expected))
                or (x_api_key is not None and hmac.compare_digest(x_api_key, self._expected_x_api_key or b""))
            ):
                await self._error_response(_wrong_key()).__call__(scope, receive, send)
                return
        path: str = scope["path"]
        fired = [] if self._faults is None or path.startswith(ADMIN_PREFIX) else self._faults.firing(scope["method"], path)
        before = [rule for rule in fired if not rule.after]
        after = [rule for rule in fired if rule.after]
        if await _misbehave(before, scope, receive, send, self._error_response):
            return
        if not after:
            await self._app(scope, receive, send)
            return
        # Serve the call (it takes effect), keep its answer, then misbehave or send it late.
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self._app(scope, receive, keep)
        if await _misbehave(after, scope, receive, send, self._error_response):
            return
        for message in answer:
            await send(message)


async def _misbehave(
    rules: list[HttpFault], scope: Scope, receive: Receive, send: Send, respond: Callable[[ServiceError], Response]
) -> bool:
    """Wait the rules' delays, then drop the connection or answer with an injected status; whether it answered."""
    delay = sum(rule.delay for rule in rules)
    if delay:
        await asyncio.sleep(delay)
    if any(rule.drop for rule in rules):
        # Headers announcing a body that never comes: the server then closes the connection, and
        # the client gets a transport error ("peer closed connection"), as on a reset.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        return True
    failing = next((rule for rule in rules if rule.status is not None), None)
    if failing is None:
        return False
    await _injected(failing, respond).__call__(scope, receive, send)
    return True


def _missing_key() -> ServiceError:
    return ServiceError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def _wrong_key() -> ServiceError:
    # Never echo the key that was sent: it could be a real one sent to the wrong server.
    return ServiceError(401, "Incorrect API key provided.", code="invalid_api_key")


def _injected(rule: HttpFault, respond: Callable[[ServiceError], Response]) -> Response:
    status = rule.status or 500
    if status == 429:
        message = "Rate limit reached (injected by the local fault plan)."
        exc = ServiceError(429, message, type="rate_limit_error", code="rate_limit_exceeded")
    elif status >= 500:
        message = "The server had an error processing your request (injected by the local fault plan)."
        exc = ServiceError(status, message, type="server_error")
    else:
        exc = ServiceError(status, f"Injected HTTP {status} (local fault plan).")
    response = respond(exc)
    if rule.retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(rule.retry_after))
        response.headers["retry-after-ms"] = str(int(rule.retry_after * 1000))
    return response
